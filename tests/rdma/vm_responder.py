"""An rxe RC responder in the VM for tests/data/rxe/rc_*responses.pcap (run by rxe_fixtures.py).

Usage (in the VM): python vm_responder.py DEVICE GID_INDEX HOST_IP QPN PSN OUT_JSON SECONDS
[RECVS [srq]]

Registers a 4096-byte region (bytes 0..255 repeated, all remote access), connects an RC QP of
DEVICE to the made-up peer QPN/PSN at ``::ffff:HOST_IP`` (its receive queue then expects PSN
from the peer; its own send PSN is 0x002000), posts RECVS (default one) 256-byte receives
(work request ids 1, 2, ...; with ``srq``, the QP takes its receives from a shared receive
queue of 16 and they are posted there), writes ``{"qpn", "rkey", "addr", "atomic_addr"}`` to
OUT_JSON (``atomic_addr``: an 8-byte aligned word in the region holding 41) and, for SECONDS
while the host sends it requests, polls its completion queue: every completion is appended to
``OUT_JSON.wc.json`` (``wr_id``, ``status``, ``status_name``, ``opcode``, ``byte_len``), which
is rewritten whole after each new one. The arguments, the pattern and the JSON hand-over are
vm_rxe_setup.py's, shared with the pyverbs scripts.
"""

from __future__ import annotations

import sys
import time

from vm_rxe_setup import PATTERN, peer_args, write_json

from kbypass import rdma


def main(argv: list[str]) -> int:
    peer, rest = peer_args(argv)
    out, seconds = rest[0], float(rest[1])
    recvs = int(rest[2]) if len(rest) > 2 else 1
    use_srq = len(rest) > 3 and rest[3] == "srq"
    with rdma.Context(peer.dev) as ctx:
        cq = ctx.create_cq(64)
        pd = ctx.alloc_pd()
        buf = bytearray(PATTERN)
        mr = pd.register(buf)
        word = 1024 + (-(mr.addr + 1024) % 8)
        buf[word : word + 8] = (41).to_bytes(8, "little")
        srq = pd.create_srq(16) if use_srq else None
        qp = pd.create_qp("RC", cq, srq=srq)
        qp.connect(rdma.Endpoint(peer.qpn, peer.psn, peer.gid), psn=0x002000,
                   gid_index=peer.gid_index)  # fmt: skip
        for i in range(recvs):
            (srq or qp).post_recv(mr, offset=0, length=256, wr_id=1 + i)
        info = {"qpn": qp.qp_num, "rkey": mr.rkey, "addr": mr.addr, "atomic_addr": mr.addr + word}
        write_json(out, info)
        seen: list[dict[str, object]] = []
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            wcs = cq.poll()
            for wc in wcs:
                seen.append({"wr_id": wc.wr_id, "status": wc.status,
                             "status_name": wc.status_name, "opcode": wc.opcode,
                             "byte_len": wc.byte_len})  # fmt: skip
            if wcs:
                write_json(out + ".wc.json", seen)
            time.sleep(0.05)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
