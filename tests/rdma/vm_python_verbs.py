"""kbypass.rdma scenarios run INSIDE the soft-RoCE VM by test_python_rdma.py.

Usage (in the VM): python vm_python_verbs.py SCENARIO... ; prints "ok NAME" or "FAIL NAME" and
the traceback per scenario (one interpreter for all: starting Python and NumPy under TCG costs
seconds), and exits non-zero if any failed.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import time
import traceback
from collections.abc import Callable

import numpy as np
import vm_perftest  # the perftest scenarios, in a file of their own
import vm_srq_events  # the asynchronous-event scenarios

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


def refused_as_unsupported(call: Callable[[], object], otherwise: str) -> None:
    """``call()`` must raise OSError(EOPNOTSUPP); ``otherwise`` says what it did instead."""
    try:
        call()
    except OSError as e:
        assert e.errno == errno.EOPNOTSUPP, e
    else:
        raise AssertionError(otherwise)


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
        # a libibverbs context: not user-space, no engine counters, listed with its netdev
        assert not ctx.is_userspace and ctx.interface is None and ctx.notes == []
        refused_as_unsupported(
            ctx.engine_counters, "a libibverbs context answered engine_counters()"
        )
        rxe0 = next(d for d in rdma.devices() if d.name == "rxe0")
        assert (rxe0.userspace, rxe0.interface) == (False, "eth0"), rxe0
        ep = rdma.Endpoint(0x12, 0x345, "::ffff:198.18.0.15")
        wire = ep.to_pingpong()
        assert wire[:51] == b"0000:000012:000345:00000000000000000000ffffc612000f", wire
        assert rdma.Endpoint.from_pingpong(wire) == ep


def scenario_send_with_invalidate_on_rxe() -> None:
    with rdma.Context("rxe0") as ctx:
        cq = ctx.create_cq(16)
        pd, a, b = rc_pair(ctx, cq)
        src, dst = np.arange(64, dtype=np.uint8), np.zeros(128, dtype=np.uint8)
        msrc, mdst = pd.register(src), pd.register(dst)
        target = pd.register(np.zeros(64, dtype=np.uint8))
        # No memory windows in kbypass: a kernel MR cannot be made remotely invalidatable.
        refused_as_unsupported(
            target.allow_remote_invalidate, "a kernel MR was made remotely invalidatable"
        )
        # rxe refuses to invalidate an ordinary MR's key (class J), as the engine does: the
        # request is ACKed, the receive completes with the error, the QP goes to the error state.
        b.post_recv(mdst, length=64, wr_id=1)
        b.post_recv(mdst, offset=64, length=64, wr_id=2)
        a.send(msrc, wr_id=3, invalidate_rkey=target.rkey)
        wcs = {w.wr_id: w for w in wait_wcs(cq, 3)}
        assert wcs[3].status_name == "SUCCESS", wcs
        assert (wcs[1].status_name, wcs[1].invalidated_rkey) == ("REM_INV_REQ_ERR", None), wcs
        assert wcs[2].status_name == "WR_FLUSH_ERR", wcs
        assert target.valid and b.state == 6, b.state  # IBV_QPS_ERR


def reserve_hugepages(n: int) -> int:
    """Reserve ``n`` 2 MiB pages in the guest (it has 2 GiB); return how many are free."""
    try:
        with open("/proc/sys/vm/nr_hugepages", "w") as f:
            f.write(str(n))
    except OSError:
        return 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("HugePages_Free:"):
                return int(line.split()[1])
    return 0


def scenario_kbypass_memory() -> None:
    import kbypass

    free = reserve_hugepages(8)
    with rdma.Context("rxe0") as ctx:
        cq = ctx.create_cq(32)
        pd, a, b = rc_pair(ctx, cq)
        src = np.arange(4096, dtype=np.uint32).view(np.uint8)
        msrc = pd.register(src)
        # A HugeRegion, registered whole (the object itself, and its .array through the
        # buffer protocol); the tier is the one the guest gave us.
        region = kbypass.HugeRegion(4 << 20)
        assert free < 2 or region.tier == "2m", (free, region.tier)
        assert region.tier in ("1g", "2m", "thp", "4k"), region.tier
        mreg = pd.register(region)
        assert (mreg.addr, mreg.length) == (region.address, region.size), mreg
        a.write(msrc, mreg.addr + (3 << 20), mreg.rkey, length=16384, wr_id=1)
        (wc,) = wait_wcs(cq, 1)
        assert wc.check().wr_id == 1
        view = region.array
        assert (view[3 << 20 : (3 << 20) + 16384] == src).all() and not view[: 3 << 20].any()
        # The MR keeps the memory: close the HugeRegion and drop every view, then write again.
        del view
        region.close()
        a.write(msrc, mreg.addr, mreg.rkey, length=64, wr_id=2)
        assert wait_wcs(cq, 1)[0].status_name == "SUCCESS"
        back = np.zeros(64, dtype=np.uint8)
        mback = pd.register(back)
        b.read(mback, mreg.addr, mreg.rkey, length=64, wr_id=3)
        assert wait_wcs(cq, 1)[0].status_name == "SUCCESS" and (back == src[:64]).all()
        mreg.close()
        # .array of another region through the buffer protocol.
        region2 = kbypass.HugeRegion(2 << 20)
        arr = region2.array
        marr = pd.register(arr)
        assert marr.addr == region2.address
        a.write(msrc, marr.addr + 100, marr.rkey, length=50, wr_id=4)
        assert wait_wcs(cq, 1)[0].status_name == "SUCCESS" and (arr[100:150] == src[:50]).all()
        # A Mempool: the pool registers its objects (object i at offset i * stride), and one
        # object's view(i) registers alone.
        pool = kbypass.Mempool(1024, 2048)  # 2 MiB of objects: worth huge pages
        assert free < 8 or pool.tier == "2m", (free, pool.tier)
        mpool = pd.register(pool)
        assert mpool.length == pool.count * pool.stride, (mpool.length, pool.stride)
        (i,) = pool.get(1).tolist()
        a.write(msrc, mpool.addr + i * pool.stride, mpool.rkey, length=2048, wr_id=5)
        assert wait_wcs(cq, 1)[0].status_name == "SUCCESS"
        assert (pool.view(i) == src[:2048]).all() and (pool.array[i] == src[:2048]).all()
        j = (i + 1) % pool.count
        mobj = pd.register(pool.view(j))
        assert mobj.length == pool.size
        a.write(msrc, mobj.addr, mobj.rkey, offset=2048, length=2048, wr_id=6)
        assert wait_wcs(cq, 1)[0].status_name == "SUCCESS"
        assert (pool.view(j) == src[2048:4096]).all()
        pool.close()
        a.write(msrc, mpool.addr, mpool.rkey, length=8, wr_id=7)
        assert wait_wcs(cq, 1)[0].status_name == "SUCCESS"
        print(f"tiers: region {region.tier}, pool {pool.tier}, free 2M pages {free}")


def rdma_resources() -> dict[str, int]:
    """Kernel object counts of rxe0 (``rdma resource show``: pd, cq, qp, mr...)."""
    out = subprocess.run(["rdma", "resource", "show"], capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        words = line.split()
        if "rxe0:" in words:
            words = words[words.index("rxe0:") + 1 :]
            return {words[k]: int(words[k + 1]) for k in range(0, len(words) - 1, 2)}
    raise AssertionError(f"no rxe0 in `rdma resource show`: {out.stdout}")


def scenario_dropped_in_any_order() -> None:
    import gc
    import itertools
    import random

    before = rdma_resources()
    orders = list(itertools.permutations(range(7)))
    random.Random(5).shuffle(orders)
    for order in orders[:12]:
        ctx = rdma.Context("rxe0")
        cq = ctx.create_cq(16)
        pd, a, b = rc_pair(ctx, cq)
        mem = np.arange(16, dtype=np.uint8)
        mr = pd.register(mem)
        srq = pd.create_srq(8)
        objs: list[object] = [ctx, cq, pd, a, b, mr, srq]
        during = rdma_resources()
        for key, extra in (("pd", 1), ("cq", 1), ("qp", 2), ("mr", 1), ("srq", 1)):
            if key in before:
                assert during[key] == before[key] + extra, (key, before, during)
        del ctx, cq, pd, a, b, mr, srq
        for k in order:
            objs[k] = None
            gc.collect()
        assert rdma_resources() == before, (order, before, rdma_resources())


def scenario_srq_from_python() -> None:
    with rdma.Context("rxe0") as ctx:
        cq = ctx.create_cq(64)
        pd = ctx.alloc_pd()
        srq = pd.create_srq(32)
        a, b = pd.create_qp("RC", cq), pd.create_qp("RC", cq)
        c, d = pd.create_qp("RC", cq, srq=srq), pd.create_qp("RC", cq, srq=srq)
        a.connect(c.endpoint(psn=3), psn=1)
        c.connect(a.endpoint(psn=1), psn=3)
        b.connect(d.endpoint(psn=4), psn=2)
        d.connect(b.endpoint(psn=2), psn=4)
        buf = np.zeros(1024, dtype=np.uint8)
        mr = pd.register(buf)
        for k in range(4):
            srq.post_recv(mr, offset=512 + 64 * k, length=64, wr_id=100 + k)
        buf[0:4] = [1, 2, 3, 4]
        buf[64:68] = [5, 6, 7, 8]
        a.send(mr, offset=0, length=4, wr_id=1)
        b.send(mr, offset=64, length=4, wr_id=2)
        wcs = wait_wcs(cq, 4)
        recvs = [w for w in wcs if w.opcode == rdma.Opcode.RECV]
        assert sorted(w.qp_num for w in recvs) == sorted([c.qp_num, d.qp_num]), wcs
        assert all(w.check().wr_id in range(100, 104) for w in recvs), recvs
        got = sorted(bytes(buf[512 + 64 * (w.wr_id - 100) :][:4]) for w in recvs)
        assert got == [bytes([1, 2, 3, 4]), bytes([5, 6, 7, 8])], got
        try:
            c.post_recv(mr, length=8)
        except OSError:
            pass
        else:
            raise AssertionError("post_recv on a QP with an SRQ was accepted")
        # the limit event: vm_srq_events.scenario_srq_limit_event_on_rxe


def scenario_inline_send_from_a_region() -> None:
    with rdma.Context("rxe0") as ctx:
        cq = ctx.create_cq(16)
        pd, a, b = rc_pair(ctx, cq)
        buf = np.zeros(1024, dtype=np.uint8)
        mr = pd.register(buf)
        buf[:8] = np.frombuffer(b"inline!!", dtype=np.uint8)
        b.post_recv(mr, offset=512, length=64, wr_id=1)
        a.send(mr, offset=0, length=8, wr_id=2, inline=True)
        wcs = {w.wr_id: w.check() for w in wait_wcs(cq, 2)}
        assert wcs[1].byte_len == 8 and bytes(buf[512:520]) == b"inline!!", wcs
        # The payload is a slice of a registered region, bounds-checked, and fits the WQE.
        for length, words in ((600, "outside"), (512, "max_inline_data")):
            try:
                a.send(mr, offset=512, length=length, inline=True)
            except ValueError as e:
                assert words in str(e), e
            else:
                raise AssertionError(f"an inline send of {length} bytes was accepted")


def scenario_error_state_flush_and_exceptions() -> None:
    with rdma.Context("rxe0") as ctx:
        cq = ctx.create_cq(32)
        pd, a, b = rc_pair(ctx, cq)
        mem = np.zeros(256, dtype=np.uint8)
        mr = pd.register(mem)
        # wrong rkey: a named status, and the exception when asked for
        a.write(mr, mr.addr, mr.rkey + 1, length=8, wr_id=50)
        (wc,) = wait_wcs(cq, 1)
        assert rdma.Status(wc.status) is rdma.Status.REM_ACCESS_ERR, wc
        try:
            wc.check()
        except rdma.CompletionError as e:
            assert "work request 50" in str(e) and "remote key" in str(e), e
        else:
            raise AssertionError("check() of REM_ACCESS_ERR did not raise")
        for k in range(5):
            b.post_recv(mr, offset=64, length=64, wr_id=k)
        b.to_error()
        assert b.state == 6, b.state
        wcs = wait_wcs(cq, 5)
        assert sorted(w.wr_id for w in wcs) == list(range(5)), wcs
        assert {rdma.Status(w.status) for w in wcs} == {rdma.Status.WR_FLUSH_ERR}, wcs
        try:
            wcs[0].check()
        except rdma.CompletionError as e:
            assert isinstance(e, OSError) and e.errno == 5, e
            assert "WR_FLUSH_ERR" in str(e) and "reset and reconnect" in str(e), e
        else:
            raise AssertionError("check() of a flushed completion did not raise")
        # recovery: both back to RESET, INIT with receives posted, then RTS again
        for qp in (a, b):
            qp.to_reset()
            assert qp.state == 0
            qp.init()
            assert qp.state == 1
        b.post_recv(mr, offset=128, length=64, wr_id=60)
        a.connect(b.endpoint(psn=9), psn=8)
        b.connect(a.endpoint(psn=8), psn=9)
        mem[:4] = 9
        a.send(mr, length=4, wr_id=61)
        assert all(w.check() for w in wait_wcs(cq, 2)) and (mem[128:132] == 9).all()


def scenario_endpoint_serialization() -> None:
    import pickle

    with rdma.Context("rxe0") as ctx:
        cq = ctx.create_cq(16)
        pd = ctx.alloc_pd()
        a, b = pd.create_qp("RC", cq), pd.create_qp("RC", cq)
        mem = np.zeros(4096, dtype=np.uint8)
        mr = pd.register(mem)
        ep = b.endpoint(psn=0x77, mr=mr)
        assert (ep.rkey, ep.addr, ep.length) == (mr.rkey, mr.addr, 4096), ep
        wire = ep.to_bytes()
        assert len(wire) == 52 and wire[:4] == b"KBE1"
        peer = rdma.Endpoint.from_bytes(wire)
        assert peer == ep and pickle.loads(pickle.dumps(ep)) == ep
        # connect and write using only what the serialized record says
        a.connect(peer, psn=0x66)
        b.connect(rdma.Endpoint.from_bytes(a.endpoint(psn=0x66).to_bytes()), psn=0x77)
        src = pd.register(np.full(32, 0xAB, dtype=np.uint8))
        a.write(src, peer.addr + peer.length - 32, peer.rkey, wr_id=1)
        assert wait_wcs(cq, 1)[0].check() and (mem[-32:] == 0xAB).all()
        for bad in (wire[:51], b"X" + wire[1:]):
            try:
                rdma.Endpoint.from_bytes(bad)
            except ValueError:
                continue
            raise AssertionError(f"from_bytes accepted {bad!r}")


PP_ITERS = 20
PP_SIZE = 4096


def pingpong_tool(*args: str) -> subprocess.Popen[str]:
    cmd = f"ibv_rc_pingpong -d rxe0 -g 1 -s {PP_SIZE} -n {PP_ITERS} {' '.join(args)}"
    # A client retries until our server listens (ibv_rc_pingpong does not wait by itself).
    script = f"for i in $(seq 100); do {cmd} && exit 0; sleep 0.2; done; exit 1"
    return subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True)


def pingpong_side(
    ctx: rdma.Context,
) -> tuple[rdma.CompletionQueue, rdma.QueuePair, rdma.MemoryRegion]:
    cq = ctx.create_cq(64)
    pd = ctx.alloc_pd()
    qp = pd.create_qp("RC", cq)
    mr = pd.register(np.zeros(2 * PP_SIZE, dtype=np.uint8))
    qp.init()
    for k in range(8):
        qp.post_recv(mr, length=PP_SIZE, wr_id=1000 + k)
    return cq, qp, mr


def next_of(cq: rdma.CompletionQueue, pending: list[rdma.WorkCompletion], recv: bool) -> None:
    deadline = time.monotonic() + 30
    while True:
        for w in pending:
            if (w.opcode == rdma.Opcode.RECV) == recv:
                pending.remove(w)
                w.check()
                return
        pending += cq.poll(16)
        assert time.monotonic() < deadline, pending


def scenario_pingpong_interop_from_python() -> None:
    with rdma.Context("rxe0") as ctx:
        # kbypass server, ibv_rc_pingpong client
        cq, qp, mr = pingpong_side(ctx)
        tool = pingpong_tool("-p", "18610", "127.0.0.1")
        remote = qp.pingpong_accept(port=18610, psn=0x1234, gid_index=1)
        assert remote.gid == ctx.gid(index=1) and qp.state == 3, remote
        pending: list[rdma.WorkCompletion] = []
        for i in range(PP_ITERS):
            next_of(cq, pending, recv=True)
            qp.post_recv(mr, length=PP_SIZE, wr_id=2000 + i)
            qp.send(mr, offset=PP_SIZE, length=PP_SIZE, wr_id=i)
            next_of(cq, pending, recv=False)
        out, _ = tool.communicate(timeout=60)
        assert tool.returncode == 0 and f"{PP_ITERS} iters in" in out, out
        # ibv_rc_pingpong server, kbypass client
        cq, qp, mr = pingpong_side(ctx)
        tool = pingpong_tool("-p", "18611")
        # The tool's server needs a moment to listen: pingpong_connect retries until timeout.
        remote = qp.pingpong_connect("127.0.0.1", port=18611, psn=0x4321, gid_index=1)
        assert qp.state == 3 and remote.qpn != qp.qp_num, remote
        pending = []
        for i in range(PP_ITERS):
            qp.send(mr, offset=PP_SIZE, length=PP_SIZE, wr_id=i)
            next_of(cq, pending, recv=False)
            next_of(cq, pending, recv=True)
            qp.post_recv(mr, length=PP_SIZE, wr_id=3000 + i)
        out, _ = tool.communicate(timeout=60)
        assert tool.returncode == 0 and f"{PP_ITERS} iters in" in out, out


def scenario_uc_sg_lists_and_write_with_imm() -> None:
    with rdma.Context("rxe0") as ctx:
        cq = ctx.create_cq(32)
        pd = ctx.alloc_pd()
        a, b = pd.create_qp("UC", cq), pd.create_qp("UC", cq)
        a.connect(b.endpoint(psn=1), psn=2)
        b.connect(a.endpoint(psn=2), psn=1)
        head = np.frombuffer(b"head-", dtype=np.uint8).copy()
        body = np.frombuffer(b"and-body", dtype=np.uint8).copy()
        mh, mb = pd.register(head), pd.register(body)
        dst = np.zeros(64, dtype=np.uint8)
        md = pd.register(dst)
        # a gathered UC write with immediate: the receiver consumes a receive for the imm
        b.post_recv(md, offset=0, length=1, wr_id=10)
        a.write(mh, md.addr + 8, md.rkey, wr_id=11, imm=0xABCD, sg=[(mb, 0, 8)])
        wcs = {w.wr_id: w.check() for w in wait_wcs(cq, 2)}
        assert wcs[10].opcode == rdma.Opcode.RECV_RDMA_WITH_IMM and wcs[10].imm == 0xABCD, wcs
        assert bytes(dst[8:21]) == b"head-and-body", bytes(dst)
        # a UC send scattered over two receive buffers
        dst[:] = 0
        b.post_recv(md, offset=40, length=4, wr_id=20, sg=[(md, 50, 9)])
        a.send(mh, wr_id=21, sg=[(mb, 0, 8)])
        wcs = {w.wr_id: w.check() for w in wait_wcs(cq, 2)}
        assert wcs[20].byte_len == 13, wcs
        assert bytes(dst[40:44]) + bytes(dst[50:59]) == b"head-and-body", bytes(dst)


def scenario_rdma_cm_connect_accept() -> None:
    import threading

    guest = "198.18.0.15"
    with rdma.Context("rxe0") as ctx:
        cq = ctx.create_cq(32)
        pd = ctx.alloc_pd()
        a, b = pd.create_qp("RC", cq), pd.create_qp("RC", cq)
        mem = np.zeros(64, dtype=np.uint8)
        mr = pd.register(mem)
        accepted: list[rdma.CmConnection | BaseException] = []

        def server() -> None:
            try:
                accepted.append(b.cm_accept(guest, port=7480, timeout=30))
            except BaseException as e:  # reported by the main thread
                accepted.append(e)

        t = threading.Thread(target=server)
        t.start()
        deadline = time.monotonic() + 30
        while True:  # the listener may not be up yet: the CM rejects until it is
            try:
                conn = a.cm_connect(guest, port=7480, timeout=10)
                break
            except OSError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        t.join(30)
        (srv,) = accepted
        assert isinstance(srv, rdma.CmConnection), srv
        assert a.state == 3 and b.state == 3, (a.state, b.state)
        mem[:8] = np.arange(1, 9)
        a.write(mr, mr.addr + 32, mr.rkey, length=8, wr_id=1)
        b.post_recv(mr, offset=48, length=16, wr_id=2)
        a.send(mr, length=4, wr_id=3)
        wcs = {w.wr_id: w.check() for w in wait_wcs(cq, 3)}
        assert (
            wcs[2].byte_len == 4 and (mem[32:40] == mem[:8]).all() and (mem[48:52] == mem[:4]).all()
        )
        with conn, srv:
            pass
        assert conn.closed and srv.closed
        try:
            a.cm_connect("not-an-ip")
        except ValueError:
            pass
        else:
            raise AssertionError("cm_connect accepted a host name")


def scenario_rping_client_against_kbypass_cm_server() -> None:
    """rdma-core's ``rping -c -V`` against a kbypass server connected through rdma_cm.

    rping's loop: the client SENDs its source buffer (BE64 address, BE32 rkey, BE32 size),
    the server RDMA-READs it and SENDs "go ahead"; the client SENDs its sink buffer, the server
    RDMA-WRITEs what it read there and SENDs "go ahead"; the client checks (-V) the data.
    """
    import struct

    count, size = 5, 100
    script = (
        f"for i in $(seq 50); do rping -c -a 198.18.0.15 -p 7481 -C {count} -S {size} -V -v"
        " && exit 0; sleep 0.3; done; exit 1"
    )
    with rdma.Context("rxe0") as ctx:
        cq = ctx.create_cq(32)
        pd = ctx.alloc_pd()
        qp = pd.create_qp("RC", cq)
        inbox, outbox = np.zeros(16, dtype=np.uint8), np.zeros(16, dtype=np.uint8)
        data = np.zeros(size, dtype=np.uint8)
        m_in, m_out, m_data = pd.register(inbox), pd.register(outbox), pd.register(data)
        tool = subprocess.Popen(["sh", "-c", script], stdout=subprocess.PIPE, text=True)
        conn = qp.cm_accept("198.18.0.15", port=7481, timeout=60)
        qp.post_recv(m_in, wr_id=1)
        pending: list[rdma.WorkCompletion] = []

        def receive() -> tuple[int, int, int]:
            next_of(cq, pending, recv=True)
            addr, rkey, n = struct.unpack(">QII", inbox.tobytes())
            qp.post_recv(m_in, wr_id=1)
            return addr, rkey, n

        def complete() -> None:
            next_of(cq, pending, recv=False)

        for _ in range(count):
            addr, rkey, n = receive()
            assert n == size, n
            qp.read(m_data, addr, rkey, length=n, wr_id=2)
            complete()
            qp.send(m_out, wr_id=3)
            complete()
            addr, rkey, n = receive()
            qp.write(m_data, addr, rkey, length=n, wr_id=4)
            complete()
            qp.send(m_out, wr_id=5)
            complete()
        out, _ = tool.communicate(timeout=60)
        conn.close()
        assert tool.returncode == 0, out
        assert bytes(data[:12]) == f"rdma-ping-{count - 1}:".encode()[:12], bytes(data)
        assert out.count("ping data: rdma-ping-") == count, out


SCENARIOS: dict[str, Callable[[], None]] = {
    name.removeprefix("scenario_"): fn
    for name, fn in [
        *globals().items(),
        *vars(vm_perftest).items(),
        *vars(vm_srq_events).items(),
    ]
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
