"""kbypass.rdma scenarios run INSIDE the soft-RoCE VM by test_python_rdma.py.

Usage (in the VM): python vm_python_verbs.py SCENARIO... ; prints "ok NAME" or "FAIL NAME" and
the traceback per scenario (one interpreter for all: starting Python and NumPy under TCG costs
seconds), and exits non-zero if any failed.
"""

from __future__ import annotations

import sys
import time
import traceback
from collections.abc import Callable

import numpy as np

from kbypass import rdma


def wait_wcs(cq: rdma.CompletionQueue, n: int) -> list[rdma.WorkCompletion]:
    out: list[rdma.WorkCompletion] = []
    deadline = time.monotonic() + 20
    while len(out) < n:
        out += cq.poll(16)
        assert time.monotonic() < deadline, f"only {len(out)} of {n} completions: {out}"
    return out


def rc_pair(
    ctx: rdma.Context, cq: rdma.CompletionQueue
) -> tuple[rdma.ProtectionDomain, rdma.QueuePair, rdma.QueuePair]:
    pd = ctx.alloc_pd()
    a, b = pd.create_qp("RC", cq), pd.create_qp("RC", cq)
    a.connect(b.endpoint(psn=0x22), psn=0x11)
    b.connect(a.endpoint(psn=0x11), psn=0x22)
    assert a.state == 3 and b.state == 3, (a.state, b.state)
    return pd, a, b


def scenario_rc_numpy_bytearray() -> None:
    with rdma.Context("rxe0") as ctx:
        port = ctx.query_port()
        assert (port.state, port.active_mtu, port.link_layer) == (4, 1024, "Ethernet"), port
        assert ctx.default_gid_index() == 1 and ctx.gid() == "::ffff:198.18.0.15", ctx.gid()
        cq = ctx.create_cq(64)
        pd, a, b = rc_pair(ctx, cq)
        src = np.arange(256, dtype=np.uint8)
        dst = np.zeros(256, dtype=np.uint8)
        msrc, mdst = pd.register(src), pd.register(dst)
        a.write(msrc, mdst.addr + 16, mdst.rkey, offset=0, length=100, wr_id=1)
        (wc,) = wait_wcs(cq, 1)
        assert (wc.status_name, wc.wr_id, wc.opcode) == ("SUCCESS", 1, rdma.Opcode.RDMA_WRITE), wc
        assert (dst[16:116] == src[:100]).all() and not dst[:16].any()
        # read back into a float64 array's bytes (any dtype registers; it is memory)
        back = np.zeros(8, dtype=np.float64)
        mback = pd.register(back)
        b.read(mback, msrc.addr, msrc.rkey, length=64, wr_id=2)
        (wc,) = wait_wcs(cq, 1)
        assert wc.status_name == "SUCCESS" and (back.view(np.uint8) == src[:64]).all()
        # send with immediate into a bytearray
        inbox = bytearray(64)
        minbox = pd.register(inbox)
        b.post_recv(minbox, wr_id=3)
        a.send(msrc, offset=200, length=10, wr_id=4, imm=0xC0FFEE)
        wcs = {w.wr_id: w for w in wait_wcs(cq, 2)}
        assert wcs[3].opcode == rdma.Opcode.RECV and wcs[3].imm == 0xC0FFEE, wcs
        assert wcs[3].byte_len == 10 and bytes(inbox[:10]) == bytes(range(200, 210))
        # atomics on a uint64 word of dst
        words = np.array([41, 0], dtype=np.uint64)
        mw = pd.register(words)
        old = np.zeros(1, dtype=np.uint64)
        mold = pd.register(old)
        a.fetch_add(mold, mw.addr, mw.rkey, 1, wr_id=5)
        assert wait_wcs(cq, 1)[0].status_name == "SUCCESS" and old[0] == 41 and words[0] == 42
        a.compare_swap(mold, mw.addr, mw.rkey, compare=42, swap=7, wr_id=6)
        assert wait_wcs(cq, 1)[0].status_name == "SUCCESS" and old[0] == 42 and words[0] == 7


def scenario_bulk_poll_into_numpy() -> None:
    with rdma.Context("rxe0") as ctx:
        cq = ctx.create_cq(256)
        pd, a, b = rc_pair(ctx, cq)
        buf = np.zeros(64 * 64, dtype=np.uint8)
        mr = pd.register(buf)
        for i in range(32):
            b.post_recv(mr, offset=2048 + i * 64, length=64, wr_id=1000 + i)
        for i in range(32):
            buf[i * 64] = i
            a.send(mr, offset=i * 64, length=64, wr_id=i)
        wcs = rdma.completion_array(64)
        got = 0
        deadline = time.monotonic() + 20
        while got < 64 and time.monotonic() < deadline:
            got += cq.poll_into(wcs[got:])
        assert got == 64, got
        assert (wcs["status"] == 0).all(), wcs
        assert sorted(wcs["wr_id"].tolist()) == list(range(32)) + list(range(1000, 1032))
        assert (buf[2048::64][:32] == np.arange(32)).all()
        try:
            cq.poll_into(bytes(48))
        except TypeError:
            pass
        else:
            raise AssertionError("poll_into accepted a read-only buffer")


def scenario_wrong_rkey_and_recovery() -> None:
    with rdma.Context("rxe0") as ctx:
        cq = ctx.create_cq(16)
        pd, a, b = rc_pair(ctx, cq)
        mem = np.zeros(64, dtype=np.uint8)
        mr = pd.register(mem)
        a.write(mr, mr.addr, mr.rkey ^ 0x5A5A, length=8, wr_id=9)
        (wc,) = wait_wcs(cq, 1)
        assert wc.status_name == "REM_ACCESS_ERR" and a.state == 6, (wc, a.state)
        a.to_reset()
        b.to_reset()
        a.connect(b.endpoint(psn=5), psn=6)
        b.connect(a.endpoint(psn=6), psn=5)
        mem[:8] = 7
        a.write(mr, mr.addr + 32, mr.rkey, length=8, wr_id=10)
        assert wait_wcs(cq, 1)[0].status_name == "SUCCESS" and (mem[32:40] == 7).all()


def scenario_completion_channel_wait() -> None:
    with rdma.Context("rxe0") as ctx:
        cq = ctx.create_cq(16, channel=True)
        pd, a, b = rc_pair(ctx, cq)
        mr = pd.register(bytearray(256))
        t = time.monotonic()
        assert cq.wait(0.05) == [] and time.monotonic() - t < 5
        b.post_recv(mr, length=64, wr_id=1)
        a.send(mr, offset=128, length=8, wr_id=2)
        got = cq.wait(10.0)
        if len(got) < 2:
            got += cq.wait(10.0)
        assert {w.wr_id for w in got} == {1, 2}, got
        no_channel = ctx.create_cq(4)
        try:
            no_channel.wait(0.01)
        except RuntimeError as e:
            assert "completion channel" in str(e)
        else:
            raise AssertionError("wait without a channel did not raise")


def scenario_any_close_order() -> None:
    ctx = rdma.Context("rxe0")
    cq = ctx.create_cq(16)
    pd, a, b = rc_pair(ctx, cq)
    mem = np.arange(16, dtype=np.uint8)
    mr = pd.register(mem)
    # Close the parents first: the children keep the kernel objects they need alive.
    ctx.close()
    pd.close()
    cq_ref = cq
    a.write(mr, mr.addr + 8, mr.rkey, length=8, wr_id=1)
    assert wait_wcs(cq_ref, 1)[0].status_name == "SUCCESS" and (mem[8:] == mem[:8]).all()
    for obj in (b, mr, a, cq):
        obj.close()
    for call in (lambda: ctx.name, lambda: a.qp_num, lambda: cq.poll(), lambda: mr.rkey):
        try:
            call()
        except RuntimeError as e:
            assert "closed" in str(e)
        else:
            raise AssertionError("a closed object still answered")


def scenario_ud_send_with_address_handle() -> None:
    with rdma.Context("rxe0") as ctx:
        cq = ctx.create_cq(16)
        pd = ctx.alloc_pd()
        a, b = pd.create_qp("UD", cq), pd.create_qp("UD", cq)
        a.connect()
        b.connect()
        buf = np.zeros(1024, dtype=np.uint8)
        mr = pd.register(buf)
        b.post_recv(mr, offset=0, length=40 + 256, wr_id=1)  # UD receives start with a GRH
        buf[512:520] = np.frombuffer(b"datagram", dtype=np.uint8)
        ah = pd.create_ah(b.endpoint())
        a.send(mr, offset=512, length=8, wr_id=2, imm=77, ah=ah, remote_qpn=b.qp_num)
        wcs = {w.wr_id: w for w in wait_wcs(cq, 2)}
        assert wcs[1].status_name == "SUCCESS" and wcs[1].byte_len == 48, wcs
        assert wcs[1].imm == 77 and wcs[1].src_qp == a.qp_num, wcs
        assert bytes(buf[40:48]) == b"datagram"
        try:
            a.send(mr, length=8, ah=ah)
        except ValueError as e:
            assert "remote_qpn" in str(e)
        else:
            raise AssertionError("a UD send without remote_qpn was accepted")


def scenario_bad_input_is_an_exception() -> None:
    with rdma.Context("rxe0") as ctx:
        cq = ctx.create_cq(4)
        pd = ctx.alloc_pd()
        for bad, exc in (
            (lambda: pd.create_qp("XRC", cq), ValueError),
            (lambda: pd.register(b"read-only bytes"), TypeError),
            (lambda: pd.register(np.zeros((4, 4), dtype=np.uint8)[:, 1]), TypeError),
            (lambda: rdma.Endpoint(1, 2, "not-a-gid"), ValueError),
            (lambda: rdma.Endpoint.from_pingpong(b"garbage"), ValueError),
            (lambda: rdma.Context("no-such-device"), FileNotFoundError),
            (lambda: ctx.create_cq(0), ValueError),
        ):
            try:
                bad()
            except exc:
                continue
            raise AssertionError(f"no {exc.__name__} from {bad}")
        ro = pd.register(b"read-only bytes", access=rdma.Access.REMOTE_READ)
        qp = pd.create_qp("RC", cq)
        try:
            qp.send(ro, offset=10, length=100)
        except ValueError as e:
            assert "outside" in str(e)
        else:
            raise AssertionError("an SGE past the region's end was accepted")
        ep = rdma.Endpoint(0x12, 0x345, "::ffff:198.18.0.15")
        wire = ep.to_pingpong()
        assert wire[:51] == b"0000:000012:000345:00000000000000000000ffffc612000f", wire
        assert rdma.Endpoint.from_pingpong(wire) == ep


SCENARIOS: dict[str, Callable[[], None]] = {
    name.removeprefix("scenario_"): fn
    for name, fn in globals().items()
    if name.startswith("scenario_") and callable(fn)
}

if __name__ == "__main__":
    failed = 0
    for name in sys.argv[1:]:
        try:
            SCENARIOS[name]()
        except Exception:
            failed += 1
            print(f"FAIL {name}\n{traceback.format_exc()}", flush=True)
        else:
            print(f"ok {name}", flush=True)
    sys.exit(1 if failed else 0)
