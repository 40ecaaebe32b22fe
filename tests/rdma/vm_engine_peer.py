"""The rxe side of kbypass.rdma engine<->rxe, run INSIDE the soft-RoCE VM by test_userspace_rxe.py.

Usage (in the VM): python vm_engine_peer.py PORT. Opens rxe1 (the L2 segment's device), listens
on TCP PORT for the host, and runs both directions of RC traffic with the host's user-space
engine, each side checking what landed in its own memory:

1. endpoints (``Endpoint.to_bytes`` with the region) are swapped and both QPs connected;
2. on ``go1`` this side is the requester: RDMA write, read, fetch-and-add, compare-and-swap
   and a send with immediate data into the host's region; it answers ``ok1`` with the SHA-256
   of what it read and the atomics' old values;
3. on ``go2`` (the host was the requester: write, read, fetch-and-add, send with immediate)
   it checks its region and the receive, and answers ``ok2`` or ``bad2: <what>``.

The memory patterns come from fixed seeds both sides know (:func:`pattern`).
"""

from __future__ import annotations

import hashlib
import socket
import sys
import time

import numpy as np

from kbypass import rdma

SIZE = 1 << 16
VM_SEED, HOST_SEED = 11, 21
# what the VM does to the host's region (offsets in the host's region)
W1, R1, FA1, CS1, SEND1 = (0, 8192), (8192, 16384), 16384, 16392, (20000, 21000)
# what the host does to the VM's region (offsets in the VM's region)
W2, R2, FA2, RECV2, SEND2 = (49152, 53248), (0, 4096), 57344, 32768, (24000, 25000)
IMM1, IMM2, ADD1, ADD2, SWAP1 = 0xBEEF, 0xCAFE, 7, 3, 0x1122334455667788


def pattern(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, SIZE, dtype=np.uint8)


def word(buf: np.ndarray, off: int) -> int:
    return int(buf[off : off + 8].view("<u8")[0])


def wait(cq: rdma.CompletionQueue, n: int) -> list[rdma.WorkCompletion]:
    out: list[rdma.WorkCompletion] = []
    deadline = time.monotonic() + 30
    while len(out) < n:
        out += cq.poll(16)
        assert time.monotonic() < deadline, f"{len(out)} of {n} completions: {out}"
    for wc in out:
        wc.check()
    return out


def recv_exact(conn: socket.socket, n: int) -> bytes:
    data = b""
    while len(data) < n:
        chunk = conn.recv(n - len(data))
        if not chunk:
            raise ConnectionError("the host closed the connection")
        data += chunk
    return data


def main(port: int) -> None:
    ctx = rdma.Context("rxe1")
    cq, pd = ctx.create_cq(256), ctx.alloc_pd()
    qp = pd.create_qp("RC", cq)
    buf = pattern(VM_SEED)
    mr = pd.register(buf)
    scratch = np.zeros(64, dtype=np.uint8)
    ms = pd.register(scratch)
    qp.init()
    qp.post_recv(mr, offset=RECV2, length=4096, wr_id=500)
    with socket.create_server(("0.0.0.0", port)) as srv:
        srv.settimeout(120)
        conn, _ = srv.accept()
    with conn:
        conn.settimeout(120)
        host = rdma.Endpoint.from_bytes(recv_exact(conn, 52))
        conn.sendall(qp.endpoint(psn=0x3344, mr=mr).to_bytes())
        qp.connect(host, psn=0x3344)
        print(f"connected to {host.gid} qpn {host.qpn}", flush=True)

        assert recv_exact(conn, 3) == b"go1"
        qp.write(mr, host.addr + W1[0], host.rkey, offset=W1[0], length=W1[1] - W1[0], wr_id=1)
        qp.read(mr, host.addr + R1[0], host.rkey, offset=R1[0], length=R1[1] - R1[0], wr_id=2)
        qp.fetch_add(ms, host.addr + FA1, host.rkey, add=ADD1, offset=0, wr_id=3)
        qp.compare_swap(ms, host.addr + CS1, host.rkey, compare=0, swap=SWAP1, offset=8, wr_id=4)
        n = SEND1[1] - SEND1[0]
        qp.send(mr, offset=SEND1[0], length=n, imm=IMM1, wr_id=5)
        wait(cq, 5)
        digest = hashlib.sha256(buf[R1[0] : R1[1]].tobytes()).digest()
        conn.sendall(b"ok1" + digest + scratch[:16].tobytes())
        print("requester side done", flush=True)

        assert recv_exact(conn, 3) == b"go2"
        theirs, mine = pattern(HOST_SEED), pattern(VM_SEED)
        wcs = wait(cq, 1)
        problems = []
        if (wcs[0].wr_id, wcs[0].imm, wcs[0].byte_len) != (500, IMM2, SEND2[1] - SEND2[0]):
            problems.append(f"receive {wcs[0]}")
        got = buf[RECV2 : RECV2 + SEND2[1] - SEND2[0]]
        if not (got == theirs[SEND2[0] : SEND2[1]]).all():
            problems.append("the send's bytes")
        if not (buf[W2[0] : W2[1]] == theirs[W2[0] : W2[1]]).all():
            problems.append("the write's bytes")
        if word(buf, FA2) != (word(mine, FA2) + ADD2) % (1 << 64):
            problems.append(f"fetch-and-add word {word(buf, FA2):#x}")
        conn.sendall(b"ok2" if not problems else f"bad2: {problems}".encode())
        print("responder side:", problems or "ok", flush=True)
        conn.recv(1)  # the host closes when it is done
    ctx.close()


if __name__ == "__main__":
    main(int(sys.argv[1]))
