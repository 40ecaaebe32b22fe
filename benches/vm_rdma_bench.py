"""Run INSIDE the soft-RoCE VM by bench_rdma.py: kbypass vs perftest on the same rxe0, same boot.

Prints one JSON object: MB/s and one-way microseconds for perftest and for kbypass.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time

import numpy as np

from kbypass import rdma

SIZE_BW, ITERS_BW = 65536, 2000
SIZE_LAT, ITERS_LAT = 2, 1000


def perftest(tool: str, args: list[str], row: str) -> list[str]:
    """Server and client of a perftest tool on rxe0 in loopback; the result row's columns."""
    cmd = [tool, "-d", "rxe0", "-F", "-x", "1", *args]
    server = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        for _ in range(100):
            client = subprocess.run(
                [*cmd, "127.0.0.1"], capture_output=True, text=True, timeout=120
            )
            if client.returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"{tool} client never connected: {client.stdout}{client.stderr}")
    except BaseException:
        server.kill()  # nothing will connect to it now
        raise
    finally:
        server.wait(timeout=120)
    m = re.search(rf"^\s*{row}\s.*$", client.stdout, re.M)
    if m is None:
        raise RuntimeError(f"no result row in {tool} output:\n{client.stdout}")
    return m.group(0).split()


def kbypass_pair(size: int) -> tuple[object, ...]:
    """Two connected RC QPs on rxe0, each with its own CQ and a ``size``-byte region."""
    ctx = rdma.Context("rxe0")
    pd = ctx.alloc_pd()
    cq_a, cq_b = ctx.create_cq(512), ctx.create_cq(512)
    a, b = pd.create_qp("RC", cq_a), pd.create_qp("RC", cq_b)
    a.connect(b.endpoint(psn=2), psn=1)
    b.connect(a.endpoint(psn=1), psn=2)
    buf_a, buf_b = np.zeros(size, dtype=np.uint8), np.zeros(size, dtype=np.uint8)
    mr_a, mr_b = pd.register(buf_a), pd.register(buf_b)
    return ctx, pd, cq_a, cq_b, a, b, mr_a, mr_b, buf_a, buf_b


def main() -> None:
    out: dict[str, float] = {}
    cols = perftest("ib_write_bw", ["-s", str(SIZE_BW), "-n", str(ITERS_BW)], str(SIZE_BW))
    out["perftest_bw_mb_s"] = float(cols[3])  # bytes, iterations, BW peak, BW average
    _ctx, _pd, cq_a, _cq_b, a, _b, mr_a, mr_b, *_ = kbypass_pair(SIZE_BW)
    out["kbypass_bw_mb_s"] = rdma.measure_write_bandwidth(
        a, cq_a, mr_a, mr_b.addr, mr_b.rkey, size=SIZE_BW, iterations=ITERS_BW
    )
    cols = perftest("ib_write_lat", ["-s", str(SIZE_LAT), "-n", str(ITERS_LAT)], str(SIZE_LAT))
    out["perftest_lat_us"] = float(cols[4])  # bytes, iterations, t_min, t_max, t_typical
    _ctx, _pd, cq_a, cq_b, a, b, mr_a, mr_b, *_ = kbypass_pair(64)
    samples = rdma.measure_write_latency(
        a, b, cq_a, cq_b, mr_a, mr_b, size=SIZE_LAT, iterations=ITERS_LAT
    )
    out["kbypass_lat_us"] = float(np.median(samples))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
