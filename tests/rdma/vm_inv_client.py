"""RC requests from rxe to a made-up peer, for tests/data/rxe/ (pyverbs).

Usage (in the VM, with the system Python and python3-pyverbs):
/usr/bin/python3 vm_inv_client.py DEVICE GID_INDEX HOST_IP QPN PSN RKEY SECONDS [MODE]

An RC QP of DEVICE connected to the made-up peer QPN/PSN at ``::ffff:HOST_IP`` (path MTU 1024,
send PSN 0x003000, ``max_rd_atomic`` 2) posts, with MODE ``inv`` (the default, for
rc_send_inv.pcap), one 2500-byte SEND with invalidate of RKEY (bytes 0..255 repeated); with
MODE ``reads`` (rc_read_credits.pcap), four 8-byte RDMA READs of RKEY at VADDR 0x7f0012340000
+ 8·i. It then waits SECONDS (nothing answers; rxe retransmits) and exits. The QP's set-up is
vm_rxe_setup.py's ``pyverbs_rc``.
"""

from __future__ import annotations

import sys
import time

import pyverbs.enums as e
from pyverbs.wr import SGE, SendWR
from vm_rxe_setup import peer_args, pyverbs_rc


def main(argv: list[str]) -> int:
    peer, rest = peer_args(argv)
    rkey, seconds = int(rest[0], 0), float(rest[1])
    mode = rest[2] if len(rest) > 2 else "inv"
    rc = pyverbs_rc(
        peer, sq_psn=0x003000, cq_entries=16, mr_access=e.IBV_ACCESS_LOCAL_WRITE, max_rd_atomic=2
    )
    mr, qp = rc.mr, rc.qp
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
