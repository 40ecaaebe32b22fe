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
``byte_len``, ``wc_flags``, ``invalidated_rkey``: the union with the immediate data). The
QP's set-up is vm_rxe_setup.py's ``pyverbs_rc``.
"""

from __future__ import annotations

import sys
import time

import pyverbs.enums as e
from pyverbs.mr import MW, MWBindInfo
from pyverbs.wr import SGE, RecvWR, SendWR
from vm_rxe_setup import peer_args, pyverbs_rc, write_json


def main(argv: list[str]) -> int:
    peer, rest = peer_args(argv)
    out, seconds = rest[0], float(rest[1])
    max_dest_rd_atomic = int(rest[2]) if len(rest) > 2 else 1
    remote = e.IBV_ACCESS_REMOTE_WRITE | e.IBV_ACCESS_REMOTE_READ
    rc = pyverbs_rc(
        peer,
        sq_psn=0x002000,
        cq_entries=64,
        mr_access=e.IBV_ACCESS_LOCAL_WRITE | e.IBV_ACCESS_MW_BIND,
        remote_access=remote,
        max_dest_rd_atomic=max_dest_rd_atomic,
    )
    cq, mr, qp = rc.cq, rc.mr, rc.qp
    mw = MW(rc.pd, e.IBV_MW_TYPE_2)
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
