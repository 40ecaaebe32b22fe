"""RC requests with immediate data from kbypass.rdma in the VM, for tests/data/rxe/rc_imm.pcap.

Usage (in the VM): python vm_imm_client.py DEVICE GID_INDEX HOST_IP QPN PSN RKEY VADDR SECONDS

Connects an RC QP of DEVICE to the made-up peer QPN/PSN at ``::ffff:HOST_IP`` (no out-of-band
exchange: the peer's values are given), posts a 16-byte SEND with immediate 0xC0FFEE and a
32-byte RDMA WRITE with immediate 0xBEEF to RKEY/VADDR from send PSN 0x001000, then waits
SECONDS (nothing answers; rxe retransmits) and exits.
"""

from __future__ import annotations

import sys
import time

from kbypass import rdma


def main(argv: list[str]) -> int:
    dev, gid_index, host = argv[0], int(argv[1]), argv[2]
    qpn, psn, rkey, vaddr = (int(a, 0) for a in argv[3:7])
    seconds = float(argv[7])
    with rdma.Context(dev) as ctx:
        cq = ctx.create_cq(16)
        pd = ctx.alloc_pd()
        buf = bytearray(range(64))
        mr = pd.register(buf)
        qp = pd.create_qp("RC", cq)
        qp.connect(rdma.Endpoint(qpn, psn, f"::ffff:{host}"), psn=0x001000, gid_index=gid_index)
        qp.send(mr, length=16, wr_id=1, imm=0xC0FFEE)
        qp.write(mr, vaddr, rkey, offset=16, length=32, wr_id=2, imm=0xBEEF)
        print("posted", flush=True)
        time.sleep(seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
