"""Run INSIDE the soft-RoCE VM by bench_rdma_rxe.py: one round of rxe next to kernel TCP.

Usage (in the VM)::

    python vm_rxe_vs_tcp.py bw {write,read,send} --seconds S --scale X
    python vm_rxe_vs_tcp.py lat --seconds S --scale X

``bw`` prints ``{"<size>": {"rxe_mb_s": ..., "tcp_mb_s": ...}, ...}`` for 64 B, 4 KiB and
64 KiB: for each size, ``iperf3 -l <size>`` over TCP (``S`` seconds), then perftest's
``ib_<test>_bw`` on rxe0 (50,000 / 10,000 / 1,000 messages times ``X``). ``lat`` prints
``{"rxe": {...}, "tcp": {...}}``, round-trip p50 / p99 / p99.9 in µs at 64 B: ``sockperf
ping-pong --tcp -m 64`` (``S`` seconds) and ``ib_write_lat -s 64`` (20,000 exchanges times ``X``;
perftest reports half the round trip, doubled here). MB/s are 10^6 B/s throughout (perftest's
MB/sec are 2^20 B/s and are converted).

Both ends of every transfer are in this VM: perftest's server and client use rxe0 (on eth0,
GID index 1 = 198.18.0.15) and rxe loops the packets back inside the driver; TCP runs between
198.18.0.15 and itself, which the kernel routes over loopback.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from kbypass.pingpong import parse_sockperf
from vm_rdma_bench import perftest

SIZES = (64, 4096, 65536)
BASE_ITERS = {64: 50_000, 4096: 10_000, 65536: 1_000}
LAT_SIZE = 64
LAT_ITERS = 20_000
ADDR = "198.18.0.15"  # the VM's eth0 (kbypass.testing.rxe_vm.GUEST_ADDRESS)
TCP_PORT = 18792
MIB = 1 << 20


def _server(port: int, *cmd: str) -> subprocess.Popen[bytes]:
    """Start a TCP server and wait (up to 10 s) until it listens on ``port``."""
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 10
    while True:
        if p.poll() is not None:
            raise RuntimeError(f"`{' '.join(cmd)}` exited {p.returncode} at start")
        ss = subprocess.run(
            ["ss", "-Hltn", f"sport = :{port}"], capture_output=True, text=True, timeout=10
        )
        if ss.stdout.strip():
            return p
        if time.monotonic() > deadline:
            _stop(p)
            raise TimeoutError(f"`{' '.join(cmd)}` did not listen on port {port} in 10 s")
        time.sleep(0.05)


def _stop(p: subprocess.Popen[bytes]) -> None:
    if p.poll() is None:
        p.terminate()
    try:
        p.wait(5)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def tcp_bw(size: int, seconds: int) -> float:
    """iperf3 over TCP to this VM's own address, ``size``-byte writes; MB/s received.

    A run that fails or whose report lacks the server's side (seen on a loaded machine, as in
    bench_rdma_engine.py) is run again, once.
    """
    try:
        return _iperf3(size, seconds)
    except RuntimeError as e:
        print(f"iperf3 -l {size}, run again: {e}", file=sys.stderr)
        return _iperf3(size, seconds)


def _iperf3(size: int, seconds: int) -> float:
    srv = _server(TCP_PORT, "iperf3", "-s", "-1", "-B", ADDR, "-p", str(TCP_PORT))
    try:
        r = subprocess.run(
            ["iperf3", "-c", ADDR, "-p", str(TCP_PORT), "-t", str(seconds), "-l", str(size), "-J"],
            capture_output=True, text=True, timeout=seconds + 30,
        )  # fmt: skip
    finally:
        _stop(srv)
    if r.returncode != 0:
        raise RuntimeError(f"iperf3 failed ({r.returncode}): {r.stdout}{r.stderr}")
    received = json.loads(r.stdout).get("end", {}).get("sum_received")
    if received is None:
        raise RuntimeError(f"iperf3 reported no received total: {r.stdout[-800:]}")
    return float(received["bits_per_second"]) / 8 / 1e6


def rxe_bw(test: str, size: int, iterations: int) -> float:
    """perftest's ``ib_<test>_bw`` on rxe0, server and client in this VM; average MB/s."""
    cols = perftest(f"ib_{test}_bw", ["-s", str(size), "-n", str(iterations)], str(size))
    # columns: bytes, iterations, BW peak, BW average (MB/sec = 2^20 B/s), MsgRate
    if int(cols[1]) != iterations:
        raise RuntimeError(f"ib_{test}_bw ran {cols[1]} iterations, not {iterations}: {cols}")
    return float(cols[3]) * MIB / 1e6


def tcp_rtt(seconds: int) -> dict[str, float]:
    """sockperf ping-pong over TCP at 64 B to this VM's own address: RTT percentiles in µs."""
    port = str(TCP_PORT + 1)
    srv = _server(TCP_PORT + 1, "sockperf", "server", "--tcp", "-i", ADDR, "-p", port)
    try:
        r = subprocess.run(
            ["sockperf", "ping-pong", "--tcp", "-i", ADDR, "-p", port, "-m", str(LAT_SIZE),
             "-t", str(seconds), "--full-rtt"],
            capture_output=True, text=True, timeout=seconds + 30,
        )  # fmt: skip
    finally:
        _stop(srv)
    got = parse_sockperf(r.stdout + r.stderr)
    return {k: got[k] for k in ("p50_us", "p99_us", "p99.9_us")}


def rxe_rtt(iterations: int) -> dict[str, float]:
    """``ib_write_lat -s 64`` on rxe0: RTT percentiles in µs (twice perftest's one-way figures)."""
    cmd_args = ["-s", str(LAT_SIZE), "-n", str(iterations)]
    cols = perftest("ib_write_lat", cmd_args, str(LAT_SIZE))
    # columns: bytes, iterations, t_min, t_max, t_typical (the median), t_avg, t_stdev,
    # 99% percentile, 99.9% percentile; all half a round trip
    if len(cols) < 9:
        raise RuntimeError(f"ib_write_lat's result row has no percentiles: {cols}")
    return {
        "p50_us": 2 * float(cols[4]),
        "p99_us": 2 * float(cols[7]),
        "p99.9_us": 2 * float(cols[8]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("what", choices=["bw", "lat"])
    ap.add_argument("test", nargs="?", choices=["write", "read", "send"], default="write")
    ap.add_argument("--seconds", type=int, default=2)
    ap.add_argument("--scale", type=float, default=1.0)
    args = ap.parse_args()
    out: dict[str, dict[str, float]] = {}
    if args.what == "bw":
        for size in SIZES:
            iterations = max(100, int(BASE_ITERS[size] * args.scale))
            out[str(size)] = {
                "tcp_mb_s": tcp_bw(size, args.seconds),
                "rxe_mb_s": rxe_bw(args.test, size, iterations),
            }
    else:
        out["tcp"] = tcp_rtt(args.seconds)
        out["rxe"] = rxe_rtt(max(1000, int(LAT_ITERS * args.scale)))
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
