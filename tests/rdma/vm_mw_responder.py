"""An rxe RC responder with a type 2 memory window, for rc_send_inv_mw_responses.pcap and
the read-resource fixtures (rc_rd_atomic_responses.pcap, rc_no_rd_atomic_responses.pcap).

Usage (in the VM, with the system Python and python3-pyverbs):
/usr/bin/python3 vm_mw_responder.py DEVICE GID_INDEX HOST_IP QPN PSN OUT_JSON SECONDS
[MAX_DEST_RD_ATOMIC]

kbypass.rdma registers memory with ``ibv_reg_mr`` only, which a remote peer may not invalidate,
so this responder uses pyverbs: a 4096-byte MR (bytes 0..255 repeated) that allows memory
window binding, a type 2
memory window bound over all of it (remote write and read) by a BIND_MW work request, an RC
QP of DEVICE connected to the made-up peer QPN/PSN at ``::ffff:HOST_IP`` (remote write and
read allowed, path MTU 1024, min RNR timer 12, send PSN 0x002000, MAX_DEST_RD_ATOMIC read
and atomic resources, default 1) and two 256-byte receives
(wr_id 1, 2). It writes ``{"qpn", "rkey", "mw_rkey", "addr"}`` to OUT_JSON and, for SECONDS,
appends every receive completion to ``OUT_JSON.wc.json`` (``wr_id``, ``status``, ``opcode``,
``byte_len``, ``wc_flags``, ``invalidated_rkey``: the union with the immediate data).
"""

from __future__ import annotations

import ipaddress
import json
import os
import sys
import time

import pyverbs.enums as e
from pyverbs.addr import GID, AHAttr, GlobalRoute
from pyverbs.cq import CQ
from pyverbs.device import Context
from pyverbs.mr import MR, MW, MWBindInfo
from pyverbs.pd import PD
from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr
from pyverbs.wr import SGE, RecvWR, SendWR


def write_json(path: str, value: object) -> None:
    with open(path + ".tmp", "w") as f:
        json.dump(value, f)
    os.rename(path + ".tmp", path)


def main(argv: list[str]) -> int:
    dev, gid_index, host = argv[0], int(argv[1]), argv[2]
    qpn, psn = int(argv[3], 0), int(argv[4], 0)
    out, seconds = argv[5], float(argv[6])
    max_dest_rd_atomic = int(argv[7]) if len(argv) > 7 else 1
    remote = e.IBV_ACCESS_REMOTE_WRITE | e.IBV_ACCESS_REMOTE_READ
    ctx = Context(name=dev)
    pd = PD(ctx)
    cq = CQ(ctx, 64)
    mr = MR(pd, 4096, e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_MW_BIND)
    mr.write(bytes(range(256)) * 16, 4096)
    mw = MW(pd, e.IBV_MW_TYPE_2)
    cap = QPCap(max_send_wr=16, max_recv_wr=16, max_send_sge=1, max_recv_sge=1)
    qp = QP(pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap))
    attr = QPAttr(port_num=1)
    attr.qp_access_flags = e.IBV_ACCESS_LOCAL_WRITE | remote
    attr.dest_qp_num = qpn
    attr.rq_psn = psn
    attr.sq_psn = 0x002000
    attr.path_mtu = e.IBV_MTU_1024
    attr.max_dest_rd_atomic = max_dest_rd_atomic
    attr.max_rd_atomic = 1
    attr.min_rnr_timer = 12
    attr.timeout = 14
    attr.retry_cnt = 7
    attr.rnr_retry = 7
    dgid = ipaddress.IPv6Address(f"::ffff:{host}").exploded  # pyverbs wants all 8 groups
    grh = GlobalRoute(dgid=GID(dgid), sgid_index=gid_index)
    attr.ah_attr = AHAttr(port_num=1, is_global=1, gr=grh)
    qp.to_rts(attr)
    for wr_id in (1, 2):
        qp.post_recv(RecvWR(wr_id=wr_id, num_sge=1, sg=[SGE(mr.buf, 256, mr.lkey)]))
    bind = SendWR(wr_id=100, opcode=e.IBV_WR_BIND_MW, send_flags=e.IBV_SEND_SIGNALED)
    bind.set_bind_wr(mw, MWBindInfo(mr, mr.buf, 4096, remote))
    qp.post_send(bind)
    deadline = time.monotonic() + 10
    while True:
        n, wcs = cq.poll(1)
        if n:
            if wcs[0].status != e.IBV_WC_SUCCESS or wcs[0].wr_id != 100:
                raise SystemExit(f"BIND_MW completed with status {wcs[0].status}")
            break
        if time.monotonic() > deadline:
            raise SystemExit("BIND_MW did not complete")
        time.sleep(0.01)
    info = {"qpn": qp.qp_num, "rkey": mr.rkey, "mw_rkey": bind.rkey, "addr": mr.buf}
    write_json(out, info)
    seen: list[dict[str, int]] = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        n, wcs = cq.poll(16)
        for wc in wcs[:n]:
            seen.append({"wr_id": wc.wr_id, "status": wc.status, "opcode": wc.opcode,
                         "byte_len": wc.byte_len, "wc_flags": wc.wc_flags,
                         "invalidated_rkey": wc.imm_data})  # fmt: skip
        if n:
            write_json(out + ".wc.json", seen)
        time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
