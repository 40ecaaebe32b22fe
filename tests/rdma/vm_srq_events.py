"""The asynchronous-event scenarios of vm_python_verbs.py (an rxe SRQ's limit event, read from
the context's async event queue), run INSIDE the soft-RoCE VM through that script, which imports
them.
"""

from __future__ import annotations

import time

import numpy as np

from kbypass import rdma


def _recv_completions(cq: rdma.CompletionQueue, n: int) -> list[rdma.WorkCompletion]:
    out: list[rdma.WorkCompletion] = []
    deadline = time.monotonic() + 20
    while sum(w.opcode == rdma.Opcode.RECV for w in out) < n:
        out += cq.poll(16)
        assert time.monotonic() < deadline, f"only {out} of {n} receives"
    assert all(w.status_name == "SUCCESS" for w in out), out
    return out


def _raised(srq: rdma.SharedReceiveQueue, wait: float) -> bool:
    """limit_reached(), asked again for up to `wait` seconds (the event is asynchronous)."""
    deadline = time.monotonic() + wait
    while not srq.limit_reached():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def scenario_srq_limit_event_on_rxe() -> None:
    """set_limit arms IBV_SRQ_LIMIT; the event rxe raises reaches limit_reached once."""
    with rdma.Context("rxe0") as ctx:
        cq, pd = ctx.create_cq(64), ctx.alloc_pd()
        srq, other = pd.create_srq(16), pd.create_srq(16)
        a, c = pd.create_qp("RC", cq), pd.create_qp("RC", cq, srq=srq)
        a.connect(c.endpoint(psn=7), psn=5)
        c.connect(a.endpoint(psn=5), psn=7)
        buf = np.zeros(2048, dtype=np.uint8)
        mr = pd.register(buf)
        before = ctx.async_events().get("SRQ_LIMIT_REACHED", 0)

        def post(n: int) -> None:
            for k in range(n):
                srq.post_recv(mr, offset=1024 + 32 * k, length=32, wr_id=100 + k)

        def send(n: int) -> None:
            for k in range(n):
                a.send(mr, offset=0, length=8, wr_id=k)
            _recv_completions(cq, n)

        post(8)
        other.set_limit(1)  # armed, never consumed: its flag must stay down
        srq.set_limit(5)  # raised by the take that leaves fewer than 5 of the 8
        assert not srq.limit_reached()
        send(3)  # 5 left: not below the limit
        assert not _raised(srq, 0.3), "the limit event came with 5 receives left (limit 5)"
        send(1)  # 4 left
        assert _raised(srq, 5.0), f"no limit event; async events: {ctx.async_events()}"
        assert not srq.limit_reached(), "limit_reached() did not clear the event"
        send(1)  # one-shot: not raised again until re-armed
        assert not _raised(srq, 0.3), "the limit event came again without set_limit"
        post(4)  # 7 posted
        srq.set_limit(6)
        send(1)
        assert not _raised(srq, 0.3), "the limit event came with 6 receives left (limit 6)"
        send(1)
        assert _raised(srq, 5.0), "no limit event after re-arming"
        assert not other.limit_reached(), "another SRQ's limit event was taken as this one's"
        counts = ctx.async_events()
        assert counts.get("SRQ_LIMIT_REACHED", 0) == before + 2, counts
        assert all(isinstance(k, str) and v > 0 for k, v in counts.items()), counts
        # other events are counted, not lost: rxe raises CQ_ERR for each completion a full CQ
        # could not take
        full = ctx.create_cq(1)
        w, r = pd.create_qp("RC", full), pd.create_qp("RC", cq)
        w.connect(r.endpoint(psn=9), psn=8)
        r.connect(w.endpoint(psn=8), psn=9)
        for k in range(16):
            w.write(mr, mr.addr, mr.rkey, length=8, wr_id=k)
        deadline = time.monotonic() + 10
        while ctx.async_events().get("CQ_ERR", 0) == 0:
            assert time.monotonic() < deadline, f"no CQ_ERR counted: {ctx.async_events()}"
            time.sleep(0.02)
        counts = ctx.async_events()
        assert counts.get("SRQ_LIMIT_REACHED", 0) == before + 2, counts
        assert not srq.limit_reached() and not other.limit_reached()
        # bad input is an exception naming the fix, not a silent no-op
        try:
            srq.set_limit(1 << 30)
        except OSError as e:
            assert "max_wr" in str(e), e
        else:
            raise AssertionError("a limit beyond the SRQ's size was accepted")
