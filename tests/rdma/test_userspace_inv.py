"""SEND with invalidate from Python, between two user-space engines on a veth pair.

``qp.send(mr, invalidate_rkey=k)`` posts ``IBV_WR_SEND_WITH_INV``: the receiver invalidates its
R_Key ``k`` and its receive completes with ``IBV_WC_WITH_INV`` and the key, as ibv_wc reports
it. The engine has no memory windows; ``mr.allow_remote_invalidate()`` marks a region a peer may
invalidate, and a key that may not be invalidated is refused as rxe refuses one (class J: the
receive completes with ``REM_INV_REQ_ERR``, the receiving QP goes to the error state). Root only
(AF_XDP, XDP, namespaces).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from engines import engine_pair

from kbypass import rdma
from kbypass.testing import VethPair

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0, reason="the engine needs root (AF_XDP, XDP, network namespaces)"
)

SIZE = 2500  # three packets at the 1024-byte path MTU: the IETH rides on the last one


@pytest.fixture(scope="module")
def pair() -> Iterator[VethPair]:
    with VethPair(subnet="198.18.47") as p:
        yield p


@pytest.fixture
def ctxs(pair: VethPair) -> Iterator[tuple[rdma.Context, rdma.Context]]:
    with engine_pair(pair) as both:
        yield both


def wait_one(cq: rdma.CompletionQueue, timeout: float = 10) -> Any:
    """The next completion of `cq`."""
    got = cq.wait(timeout=timeout, max=1)
    assert got, f"no completion in {timeout} s"
    return got[0]


class Rc:
    """Two connected RC QPs (``a`` sends, ``b`` receives), a payload at ``a`` and a receive
    buffer at ``b``."""

    def __init__(self, a: rdma.Context, b: rdma.Context) -> None:
        self.cqa, self.cqb = a.create_cq(64, channel=True), b.create_cq(64, channel=True)
        self.pda, self.pdb = a.alloc_pd(), b.alloc_pd()
        self.qa = self.pda.create_qp("RC", self.cqa)
        self.qb = self.pdb.create_qp("RC", self.cqb)
        self.qa.connect(self.qb.endpoint(psn=0x33), psn=0x44)
        self.qb.connect(self.qa.endpoint(psn=0x44), psn=0x33)
        self.src = np.random.default_rng(11).integers(0, 256, SIZE, dtype=np.uint8)
        self.dst = np.zeros(2 * SIZE, dtype=np.uint8)
        self.msrc, self.mdst = self.pda.register(self.src), self.pdb.register(self.dst)


def test_send_with_invalidate_delivers_the_payload_and_the_receiver_reports_the_key(
    ctxs: tuple[rdma.Context, rdma.Context],
) -> None:
    c = Rc(*ctxs)
    window = np.zeros(4096, dtype=np.uint8)
    target = c.pdb.register(window)  # the region the peer revokes, as a memory window would be
    target.allow_remote_invalidate()
    assert target.valid
    c.qb.post_recv(c.mdst, length=SIZE, wr_id=7)
    c.qa.send(c.msrc, wr_id=1, invalidate_rkey=target.rkey)
    sent = wait_one(c.cqa)
    assert (sent.wr_id, sent.status_name, sent.opcode) == (1, "SUCCESS", rdma.Opcode.SEND)
    assert sent.invalidated_rkey is None  # only the receiver's completion carries the key
    got = wait_one(c.cqb)
    assert (got.wr_id, got.status_name, got.opcode, got.byte_len) == (
        7, "SUCCESS", rdma.Opcode.RECV, SIZE,
    )  # fmt: skip
    assert got.invalidated_rkey == target.rkey and got.imm is None
    assert rdma.WcFlags(got.wc_flags) == rdma.WcFlags.WITH_INV
    assert (c.dst[:SIZE] == c.src).all()
    assert not target.valid

    # The same through poll_into: the key in imm_data, in host order.
    c.qb.post_recv(c.mdst, offset=SIZE, length=SIZE, wr_id=8)
    c.qa.send(c.msrc, length=100, wr_id=2, invalidate_rkey=target.rkey)  # again: allowed
    assert wait_one(c.cqa).status_name == "SUCCESS"
    wcs, deadline = rdma.completion_array(4), time.monotonic() + 10
    while (n := c.cqb.poll_into(wcs)) == 0:
        assert time.monotonic() < deadline, "no receive completion"
    assert n == 1 and (wcs[0]["wr_id"], wcs[0]["status"], wcs[0]["byte_len"]) == (8, 0, 100)
    assert wcs[0]["wc_flags"] & rdma.WcFlags.WITH_INV
    assert int(wcs[0]["imm_data"].byteswap()) == target.rkey

    # The invalidated key grants no remote access any more.
    c.qa.write(c.msrc, target.addr, target.rkey, length=64, wr_id=3)
    assert wait_one(c.cqa).status_name == "REM_ACCESS_ERR"
    assert not window.any()


def test_a_key_the_receiver_may_not_invalidate_is_refused_as_rxe_refuses_it(
    ctxs: tuple[rdma.Context, rdma.Context],
) -> None:
    c = Rc(*ctxs)
    ordinary = c.pdb.register(np.zeros(4096, dtype=np.uint8))  # an MR: not invalidatable
    c.qb.post_recv(c.mdst, length=SIZE, wr_id=7)
    c.qb.post_recv(c.mdst, offset=SIZE, length=SIZE, wr_id=8)
    c.qa.send(c.msrc, wr_id=1, invalidate_rkey=ordinary.rkey)
    # Class J, as rxe answers it (tests/data/rxe/rc_send_inv_responses.pcap): the request is
    # ACKed, so the sender's work request succeeds; the receive completes with the error, the
    # receiving QP goes to the error state and flushes the other receive; the key stays valid.
    assert wait_one(c.cqa).status_name == "SUCCESS"
    refused = wait_one(c.cqb)
    assert (refused.wr_id, refused.status_name, refused.invalidated_rkey) == (
        7, "REM_INV_REQ_ERR", None,
    )  # fmt: skip
    flushed = wait_one(c.cqb)
    assert (flushed.wr_id, flushed.status_name) == (8, "WR_FLUSH_ERR")
    assert ordinary.valid and c.qb.state == 6  # IBV_QPS_ERR
    assert ctxs[1].engine_counters()["naks_sent"] == 1  # counted with the refused requests


def test_bad_send_with_invalidate_arguments_are_refused_before_posting(
    ctxs: tuple[rdma.Context, rdma.Context],
) -> None:
    a, b = ctxs
    c = Rc(a, b)
    rkey = c.mdst.rkey
    with pytest.raises(ValueError, match="imm or invalidate_rkey, not both"):
        c.qa.send(c.msrc, imm=5, invalidate_rkey=rkey)
    for bad in (-1, 1 << 32):
        with pytest.raises(OverflowError):
            c.qa.send(c.msrc, invalidate_rkey=bad)
    ud_cq = a.create_cq(8)
    ud, peer = c.pda.create_qp("UD", ud_cq), c.pdb.create_qp("UD", b.create_cq(8))
    ud.connect()
    peer.connect()
    ah = c.pda.create_ah(peer.endpoint())
    with pytest.raises(ValueError, match="RC only"):
        ud.send(c.msrc, length=64, ah=ah, remote_qpn=peer.qp_num, invalidate_rkey=rkey)
    uc_a, uc_b = c.pda.create_qp("UC", c.cqa), c.pdb.create_qp("UC", c.cqb)
    uc_a.connect(uc_b.endpoint(psn=1), psn=2)
    uc_b.connect(uc_a.endpoint(psn=2), psn=1)
    with pytest.raises(ValueError, match="not one this QP type performs"):
        uc_a.send(c.msrc, length=64, invalidate_rkey=rkey)
    # Nothing was posted: no completion anywhere, and the RC pair still works.
    assert c.cqa.poll() == [] and ud_cq.poll() == []
    c.qb.post_recv(c.mdst, length=SIZE, wr_id=9)
    c.qa.send(c.msrc, wr_id=4)
    assert wait_one(c.cqa).status_name == "SUCCESS"
    got = wait_one(c.cqb)
    assert (got.wr_id, got.status_name, got.invalidated_rkey) == (9, "SUCCESS", None)
    assert got.wc_flags == 0
