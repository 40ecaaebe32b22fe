"""RC requests from rxe that kbypass.rdma cannot post, for tests/data/rxe/ (pyverbs).

Usage (in the VM, with the system Python and python3-pyverbs):
/usr/bin/python3 vm_inv_client.py DEVICE GID_INDEX HOST_IP QPN PSN RKEY SECONDS [MODE]

An RC QP of DEVICE connected to the made-up peer QPN/PSN at ``::ffff:HOST_IP`` (path MTU 1024,
send PSN 0x003000, ``max_rd_atomic`` 2) posts, with MODE ``inv`` (the default, for
rc_send_inv.pcap), one 2500-byte SEND with invalidate of RKEY (bytes 0..255 repeated); with
MODE ``reads`` (rc_read_credits.pcap), four 8-byte RDMA READs of RKEY at VADDR 0x7f0012340000
+ 8·i. It then waits SECONDS (nothing answers; rxe retransmits) and exits.
"""

from __future__ import annotations

import ipaddress
import sys
import time

import pyverbs.enums as e
from pyverbs.addr import GID, AHAttr, GlobalRoute
from pyverbs.cq import CQ
from pyverbs.device import Context
from pyverbs.mr import MR
from pyverbs.pd import PD
from pyverbs.qp import QP, QPAttr, QPCap, QPInitAttr
from pyverbs.wr import SGE, SendWR


def main(argv: list[str]) -> int:
    dev, gid_index, host = argv[0], int(argv[1]), argv[2]
    qpn, psn, rkey = (int(a, 0) for a in argv[3:6])
    seconds = float(argv[6])
    mode = argv[7] if len(argv) > 7 else "inv"
    ctx = Context(name=dev)
    pd = PD(ctx)
    cq = CQ(ctx, 16)
    mr = MR(pd, 4096, e.IBV_ACCESS_LOCAL_WRITE)
    mr.write(bytes(range(256)) * 16, 4096)
    cap = QPCap(max_send_wr=16, max_recv_wr=16, max_send_sge=1, max_recv_sge=1)
    qp = QP(pd, QPInitAttr(qp_type=e.IBV_QPT_RC, scq=cq, rcq=cq, cap=cap))
    attr = QPAttr(port_num=1)
    attr.qp_access_flags = e.IBV_ACCESS_LOCAL_WRITE
    attr.dest_qp_num = qpn
    attr.rq_psn = psn
    attr.sq_psn = 0x003000
    attr.path_mtu = e.IBV_MTU_1024
    attr.max_dest_rd_atomic = 1
    attr.max_rd_atomic = 2
    attr.min_rnr_timer = 12
    attr.timeout = 14
    attr.retry_cnt = 7
    attr.rnr_retry = 7
    dgid = ipaddress.IPv6Address(f"::ffff:{host}").exploded  # pyverbs wants all 8 groups
    grh = GlobalRoute(dgid=GID(dgid), sgid_index=gid_index)
    attr.ah_attr = AHAttr(port_num=1, is_global=1, gr=grh)
    qp.to_rts(attr)
    if mode == "reads":
        for i in range(4):
            sge = SGE(mr.buf + 8 * i, 8, mr.lkey)
            wr = SendWR(wr_id=10 + i, opcode=e.IBV_WR_RDMA_READ, num_sge=1, sg=[sge],
                        send_flags=e.IBV_SEND_SIGNALED)  # fmt: skip
            wr.set_wr_rdma(rkey, 0x7F0012340000 + 8 * i)
            qp.post_send(wr)
    else:
        wr = SendWR(wr_id=1, opcode=e.IBV_WR_SEND_WITH_INV, num_sge=1,
                    sg=[SGE(mr.buf, 2500, mr.lkey)], send_flags=e.IBV_SEND_SIGNALED)  # fmt: skip
        wr.imm_data = rkey  # the union of imm_data and invalidate_rkey, as rdma-core's tests do
        qp.post_send(wr)
    print("posted", flush=True)
    time.sleep(seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
