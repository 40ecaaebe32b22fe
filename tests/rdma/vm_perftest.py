"""The perftest scenarios of vm_python_verbs.py (kbypass.rdma against rdma-core's perftest tools on
rxe0), run INSIDE the soft-RoCE VM through that script, which imports them.
"""

from __future__ import annotations

import subprocess

import numpy as np

from kbypass import rdma


def scenario_perftest_interop_from_python() -> None:
    import re

    bw = "ib_write_bw -d rxe0 -x 1 -F -s 4096"
    with rdma.Context("rxe0") as ctx:
        # kbypass server, ib_write_bw client: it writes into our buffer and sends its report
        cq, pd = ctx.create_cq(256), ctx.alloc_pd()
        qp = pd.create_qp("RC", cq)
        buf = np.full(1 << 20, 0xAA, dtype=np.uint8)
        mr = pd.register(buf)
        script = (
            f"for i in $(seq 100); do {bw} -n 300 -p 18620 127.0.0.1 && exit 0; sleep 0.3; done"
        )
        tool = subprocess.Popen(
            ["sh", "-c", script + "; exit 1"], stdout=subprocess.PIPE, text=True
        )
        rep = qp.perftest_serve(mr, port=18620, psn=0x99, gid_index=1)
        out, _ = tool.communicate(timeout=120)
        assert tool.returncode == 0, out
        assert (rep["size"], rep["iters"]) == (4096, 300) and rep["bw_avg"] > 0, rep
        assert (buf[:4096] != 0xAA).any(), "the tool's writes did not land in our buffer"
        assert re.search(r"^\s*4096\s+300\s+[\d.]+\s+[\d.]+", out, re.M), out
        # ib_write_bw server, kbypass client: we write into its buffer; it prints our report
        cq, pd = ctx.create_cq(256), ctx.alloc_pd()
        qp = pd.create_qp("RC", cq)
        mr = pd.register(np.arange(4096, dtype=np.uint8))
        tool = subprocess.Popen(["sh", "-c", f"{bw} -p 18621"], stdout=subprocess.PIPE, text=True)
        rep = qp.perftest_write_bw(cq, mr, "127.0.0.1", port=18621, size=4096, iterations=250)
        out, _ = tool.communicate(timeout=120)
        assert tool.returncode == 0, out
        assert (rep["size"], rep["iters"]) == (4096, 250) and rep["bw_avg"] > 0, rep
        row = re.search(r"^\s*4096\s+250\s+([\d.]+)\s+([\d.]+)", out, re.M)
        assert row is not None, out
        assert abs(float(row.group(2)) - rep["bw_avg"]) < 0.01 + rep["bw_avg"] * 0.01, (row, rep)
        print(f"perftest interop: {rep}")


PT_ITERS = 200


def perftest_tool(cmd: str, client: bool) -> subprocess.Popen[str]:
    """A perftest tool on rxe0; a client retries until our server listens."""
    if client:
        cmd = f"for i in $(seq 100); do {cmd} 127.0.0.1 && exit 0; sleep 0.3; done; exit 1"
    return subprocess.Popen(["sh", "-c", cmd], stdout=subprocess.PIPE, text=True)


def perftest_row(out: str, size: int) -> tuple[float, float]:
    """The tool's result row for `size` and PT_ITERS: (peak, average) MB/s."""
    import re

    row = re.search(rf"^\s*{size}\s+{PT_ITERS}\s+([\d.]+)\s+([\d.]+)", out, re.M)
    assert row is not None, out
    return float(row.group(1)), float(row.group(2))


def scenario_perftest_read_send_atomic_from_python() -> None:
    """ib_read_bw, ib_send_bw and ib_atomic_bw (both -A types) against kbypass, both roles."""
    base = f"-d rxe0 -x 1 -F -n {PT_ITERS}"
    with rdma.Context("rxe0") as ctx:

        def side(
            n: int = 1 << 16,
        ) -> tuple[rdma.CompletionQueue, rdma.QueuePair, rdma.MemoryRegion, np.ndarray]:
            cq, pd = ctx.create_cq(256), ctx.alloc_pd()
            buf = np.full(n, 0xAA, dtype=np.uint8)
            return cq, pd.create_qp("RC", cq), pd.register(buf), buf

        # kbypass servers, tool clients
        cq, qp, mr, buf = side()
        tool = perftest_tool(f"ib_read_bw {base} -s 4096 -p 18630", client=True)
        rep = qp.perftest_serve(mr, port=18630, gid_index=1, test="read")
        out, _ = tool.communicate(timeout=120)
        assert tool.returncode == 0, out
        assert (rep["size"], rep["iters"]) == (4096, PT_ITERS) and rep["bw_avg"] > 0, rep
        assert perftest_row(out, 4096)[1] > 0 and (buf == 0xAA).all(), "a read changed our buffer"

        cq, qp, mr, buf = side()
        qp.init()
        tool = perftest_tool(f"ib_send_bw {base} -s 2048 -p 18631", client=True)
        rep = qp.perftest_serve(
            mr, port=18631, gid_index=1, test="send", cq=cq, size=2048, iterations=PT_ITERS
        )
        out, _ = tool.communicate(timeout=120)
        assert tool.returncode == 0, out
        assert (rep["size"], rep["iters"]) == (2048, PT_ITERS) and rep["bw_avg"] > 0, rep
        assert (buf[:2048] != 0xAA).any() and (buf[2048:] == 0xAA).all(), "sends did not land"
        perftest_row(out, 2048)

        for port, extra in ((18632, ""), (18633, "-A CMP_AND_SWAP")):
            cq, qp, mr, buf = side(8192)
            buf[:] = 0
            tool = perftest_tool(f"ib_atomic_bw {base} {extra} -p {port}", client=True)
            rep = qp.perftest_serve(mr, port=port, gid_index=1, test="atomic")
            out, _ = tool.communicate(timeout=120)
            assert tool.returncode == 0, out
            assert (rep["size"], rep["iters"]) == (8, PT_ITERS), rep
            words = buf.view(np.uint64)
            # fetch-and-add of 1 on words a cache line apart; compare-and-swap 0 for 0
            assert int(words.sum()) == (0 if extra else PT_ITERS), words[words != 0]
            perftest_row(out, 8)

        # tool servers, kbypass clients
        cq, qp, mr, buf = side()
        tool = perftest_tool(f"ib_read_bw {base} -s 4096 -p 18634", client=False)
        rep = qp.perftest_read_bw(cq, mr, "127.0.0.1", 18634, size=4096, iterations=PT_ITERS)
        out, _ = tool.communicate(timeout=120)
        assert tool.returncode == 0, out
        assert (rep["size"], rep["iters"]) == (4096, PT_ITERS), rep
        assert (buf[:4096] != 0xAA).any(), "the reads did not land in our buffer"
        avg = perftest_row(out, 4096)[1]  # the tool prints the report we sent
        assert abs(avg - rep["bw_avg"]) < 0.01 + rep["bw_avg"] * 0.01, (avg, rep)

        cq, qp, mr, buf = side()
        tool = perftest_tool(f"ib_send_bw {base} -s 4096 -p 18635", client=False)
        rep = qp.perftest_send_bw(cq, mr, "127.0.0.1", 18635, size=4096, iterations=PT_ITERS)
        out, _ = tool.communicate(timeout=120)
        assert tool.returncode == 0, out
        assert (rep["size"], rep["iters"]) == (4096, PT_ITERS) and rep["bw_avg"] > 0, rep
        assert perftest_row(out, 4096)[1] > 0  # its own measurement of our sends

        for port, extra in ((18636, ""), (18637, "-A CMP_AND_SWAP")):
            cq, qp, mr, buf = side(64)
            tool = perftest_tool(f"ib_atomic_bw {base} {extra} -p {port}", client=False)
            rep = qp.perftest_atomic_bw(
                cq, mr, "127.0.0.1", port, iterations=PT_ITERS, compare_swap=bool(extra)
            )
            out, _ = tool.communicate(timeout=120)
            assert tool.returncode == 0, out
            assert (rep["size"], rep["iters"]) == (8, PT_ITERS), rep
            avg = perftest_row(out, 8)[1]  # the tool prints the report we sent
            assert abs(avg - rep["bw_avg"]) < 0.01 + rep["bw_avg"] * 0.01, (avg, rep)
            # the old values (the tool's buffer is random) landed in our first word
            assert bytes(buf[:8]) != b"\xaa" * 8 and (buf[8:] == 0xAA).all(), buf[:16]
        print("perftest read/send/atomic interop: ok")


def ipv6_roce_v2_gid_index() -> int:
    """rxe0's first RoCEv2 GID that is a routable IPv6 address (not IPv4-mapped or link-local)."""
    ports = "/sys/class/infiniband/rxe0/ports/1"
    for i in range(16):
        try:
            with open(f"{ports}/gids/{i}") as g, open(f"{ports}/gid_attrs/types/{i}") as t:
                gid, kind = g.read().strip(), t.read().strip()
        except OSError:
            continue
        if kind == "RoCE v2" and not gid.startswith(("0000:", "fe80:")):
            return i
    raise AssertionError("rxe0 has no routable IPv6 RoCEv2 GID")


def scenario_perftest_uc_and_ipv6_gid_from_python() -> None:
    """UC write and send with the tools (-c UC), send over UD (-c UD: one packet per message,
    rxe0's path MTU), and a read over an IPv6 GID, both roles."""
    six = ipv6_roce_v2_gid_index()
    runs = [  # (tool and options, our QP type, test, GID index, message size)
        ("ib_write_bw -c UC -x 1 -s 4096", "UC", "write", 1, 4096),
        ("ib_send_bw -c UC -x 1 -s 4096", "UC", "send", 1, 4096),
        ("ib_send_bw -c UD -x 1 -s 1024", "UD", "send", 1, 1024),
        (f"ib_read_bw -x {six} -s 4096", "RC", "read", six, 4096),
    ]
    with rdma.Context("rxe0") as ctx:
        assert ":" in ctx.gid(index=six) and "ffff" not in ctx.gid(index=six)
        for k, (cmd, qp_type, test, gid, size) in enumerate(runs):
            cmd = f"{cmd} -d rxe0 -F -n {PT_ITERS}"
            for serve in (True, False):
                cq, pd = ctx.create_cq(256), ctx.alloc_pd()
                qp = pd.create_qp(qp_type, cq, max_recv_wr=PT_ITERS)
                buf = np.full(1 << 16, 0xAA, dtype=np.uint8)
                mr = pd.register(buf)
                port = 18640 + 2 * k + int(serve)
                tool = perftest_tool(f"{cmd} -p {port}", client=serve)
                if serve:
                    qp.init()
                    rep = qp.perftest_serve(
                        mr, port, gid_index=gid, test=test, cq=cq, size=size, iterations=PT_ITERS
                    )
                else:
                    run = {"write": qp.perftest_write_bw, "send": qp.perftest_send_bw}.get(
                        test, qp.perftest_read_bw
                    )
                    rep = run(cq, mr, "127.0.0.1", port, size, PT_ITERS, gid_index=gid)
                out, _ = tool.communicate(timeout=120)
                assert tool.returncode == 0, (cmd, serve, out)
                # a UC or UD send that finds no receive posted is dropped: the server counts
                # fewer
                lossy = serve and qp_type in ("UC", "UD") and test == "send"
                assert rep["size"] == size, rep
                assert 0 < rep["iters"] <= PT_ITERS if lossy else rep["iters"] == PT_ITERS, rep
                assert perftest_row(out, size)[1] > 0, out
                # a UD receive takes the 40-byte GRH first
                at = 40 if qp_type == "UD" and serve else 0
                landed = (buf[at : at + size] != 0xAA).any()
                # writes and sends land in the server's buffer, reads in the client's
                assert landed == (serve != (test == "read")), (cmd, serve)
