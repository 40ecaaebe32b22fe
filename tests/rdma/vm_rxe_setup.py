"""The set-up the rxe fixture scripts share, run INSIDE the soft-RoCE VM by rxe_fixtures.py.

``vm_responder.py`` (kbypass.rdma, the test environment's Python), ``vm_mw_responder.py`` and
``vm_inv_client.py`` (pyverbs, the system Python with python3-pyverbs) all start with the same
arguments, ``DEVICE GID_INDEX HOST_IP QPN PSN`` (:func:`peer_args`: the made-up peer at
``::ffff:HOST_IP`` whose QPN and PSN the host's injected frames use), hand their QP's numbers
to the host as JSON (:func:`write_json`) and register the same 4096-byte pattern
(:data:`PATTERN`). The two pyverbs scripts also build the same RC QP (:func:`pyverbs_rc`);
pyverbs is imported there only, so this module imports without it.
"""

from __future__ import annotations

import ipaddress
import json
import os
from dataclasses import dataclass
from typing import Any

#: The registered region's contents in every script: bytes 0..255, repeated to 4096 bytes.
PATTERN = bytes(range(256)) * 16


@dataclass(frozen=True)
class Peer:
    """The device to use and the made-up peer its RC QP connects to."""

    dev: str
    gid_index: int
    host: str
    qpn: int
    psn: int

    @property
    def gid(self) -> str:
        """The peer's GID: the host's IPv4 address, IPv4-mapped."""
        return f"::ffff:{self.host}"


def peer_args(argv: list[str]) -> tuple[Peer, list[str]]:
    """``DEVICE GID_INDEX HOST_IP QPN PSN`` (QPN and PSN in any base ``int(x, 0)`` reads), and
    the script's own arguments after them."""
    if len(argv) < 5:
        raise SystemExit("arguments: DEVICE GID_INDEX HOST_IP QPN PSN ...")
    dev, gid_index, host = argv[0], int(argv[1]), argv[2]
    return Peer(dev, gid_index, host, int(argv[3], 0), int(argv[4], 0)), argv[5:]


def write_json(path: str, value: object) -> None:
    """Write ``value`` to ``path`` whole (the host polls the shared folder for it)."""
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.rename(path + ".tmp", path)


@dataclass
class PyverbsRc:
    """pyverbs objects of one RC QP in RTS, kept together so none is freed under the others."""

    ctx: Any
    pd: Any
    cq: Any
    mr: Any
    qp: Any


def pyverbs_rc(
    peer: Peer,
    *,
    sq_psn: int,
    cq_entries: int,
    mr_access: int,
    remote_access: int = 0,
    max_rd_atomic: int = 1,
    max_dest_rd_atomic: int = 1,
) -> PyverbsRc:
    """A pyverbs RC QP of ``peer.dev`` in RTS, connected to ``peer`` (path MTU 1024, min RNR
    timer 12, timeout 14, retry and RNR retry 7, 16 send and receive WRs of one SGE), sending
    from ``sq_psn``, allowing local write and ``remote_access``; its CQ of ``cq_entries``
    takes both sides' completions; a 4096-byte MR with ``mr_access`` holding :data:`PATTERN`.
    """
    import pyverbs.enums as e
    from pyverbs.addr import GID, AHAttr, GlobalRoute
    from pyverbs.cq import CQ
    from pyverbs.device import Context
    from pyverbs.mr import MR
    from pyverbs.pd import PD
    from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr

    ctx = Context(name=peer.dev)
    pd = PD(ctx)
    cq = CQ(ctx, cq_entries)
    mr = MR(pd, len(PATTERN), mr_access)
    mr.write(PATTERN, len(PATTERN))
    cap = QPCap(max_send_wr=16, max_recv_wr=16, max_send_sge=1, max_recv_sge=1)
    qp = QP(pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap))
    attr = QPAttr(port_num=1)
    attr.qp_access_flags = e.IBV_ACCESS_LOCAL_WRITE | remote_access
    attr.dest_qp_num = peer.qpn
    attr.rq_psn = peer.psn
    attr.sq_psn = sq_psn
    attr.path_mtu = e.IBV_MTU_1024
    attr.max_dest_rd_atomic = max_dest_rd_atomic
    attr.max_rd_atomic = max_rd_atomic
    attr.min_rnr_timer = 12
    attr.timeout = 14
    attr.retry_cnt = 7
    attr.rnr_retry = 7
    dgid = ipaddress.IPv6Address(peer.gid).exploded  # pyverbs wants all 8 groups
    grh = GlobalRoute(dgid=GID(dgid), sgid_index=peer.gid_index)
    attr.ah_attr = AHAttr(port_num=1, is_global=1, gr=grh)
    qp.to_rts(attr)
    return PyverbsRc(ctx, pd, cq, mr, qp)
