"""``kbypass bench``: processor throughput by batch size, against the kernel's UDP socket.

On a veth bench of its own (as ``kbypass demo``), with the live-frames generator on one core and
the receiver pinned to the other, it runs the demo's NumPy handler (packets per flow) through a
:class:`kbypass.Pipeline` at several batch sizes, and the same handler fed by a kernel UDP socket,
each for the same time, and prints packets/s, the mean batch and the time per batch and per
packet. ``--plot out.png`` draws the comparison (needs matplotlib: ``pip install 'kbypass[plot]'``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from kbypass.demo import DST_PORT, count_flows, kernel_udp_batches


@dataclass
class Row:
    """One measured configuration."""

    path: str
    batch: int
    packets: int
    seconds: float
    pps: float
    mean_batch: float
    batch_latency_us: float
    per_packet_ns: float
    offered_pps: float


def _pipeline_row(ifname: str, batch: int, seconds: float, cpu: int) -> Row:
    from kbypass import DROP, Pipeline

    counts = np.zeros(256, dtype=np.int64)

    def handler(b: Any) -> None:
        count_flows(b.headers["src_port"], counts)
        b.verdicts[:] = DROP

    with Pipeline(ifname, handler, queues=[0], batch=batch, cpus=[cpu], progress=False) as p:
        t = p.run(duration=seconds)
        w = p.stats()[0]
    lat = float(w["batch_latency_ns"]) / 1e3
    mean = float(w["mean_batch"])
    pps = float(t["pps"])
    per_pkt = lat * 1e3 / mean if mean else 0.0
    return Row("kbypass Pipeline", batch, int(t["rx"]), seconds, pps, mean, lat, per_pkt, 0.0)


def _kernel_row(ip: str, seconds: float) -> Row:
    counts = np.zeros(256, dtype=np.int64)
    packets, took = kernel_udp_batches(ip, seconds, 64, lambda ports: count_flows(ports, counts))
    pps = packets / took if took else 0.0
    per_pkt = 1e9 / pps if pps else 0.0
    return Row("kernel UDP socket", 64, packets, took, pps, 64.0, per_pkt * 64 / 1e3, per_pkt, 0.0)


def run_bench(
    seconds: float = 2.0, batches: tuple[int, ...] = (1, 16, 64, 256), size: int = 60
) -> list[Row]:
    """Measure the Pipeline at each batch size and the kernel socket; returns the rows."""
    from kbypass import cpu
    from kbypass.testing import TrafficGenerator, VethPair

    allowed = cpu.allowed()
    gen_cpu, rx_cpu = allowed[0], allowed[-1]
    rows: list[Row] = []
    with (
        VethPair() as pair,
        TrafficGenerator(pair, side="a", size=size, dst_port=DST_PORT, cpu=gen_cpu) as gen,
    ):
        for b in batches:
            with pair.enter("b"):
                gen.start()
                time.sleep(0.1)
                row = _pipeline_row(pair.b.ifname, b, seconds, rx_cpu)
                row.offered_pps = gen.stop().pps
            rows.append(row)
        with pair.enter("b"), cpu.pinned(rx_cpu):
            gen.start()
            time.sleep(0.1)
            row = _kernel_row(pair.b.ip, seconds)
            row.offered_pps = gen.stop().pps
        rows.append(row)
    return rows


def plot(rows: list[Row], path: str) -> None:
    """Draw packets/s per configuration (log scale) and ns per packet into ``path``."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "--plot needs matplotlib: pip install 'kbypass[plot]' (or pip install matplotlib)"
        ) from e
    labels = [
        f"batch {r.batch}" if r.path.startswith("kbypass") else "kernel\nsocket" for r in rows
    ]
    colors = ["tab:blue" if r.path.startswith("kbypass") else "tab:gray" for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.bar(labels, [r.pps / 1e6 for r in rows], color=colors)
    ax1.set_ylabel("Mpps delivered to the handler")
    ax1.set_title("Same NumPy handler: kbypass Pipeline vs kernel socket")
    ax2.bar(labels, [r.per_packet_ns for r in rows], color=colors)
    ax2.set_ylabel("ns per packet (kbypass: batch time / batch; kernel: 1 / rate)")
    ax2.set_yscale("log")
    ax2.set_title("Cost per packet")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``kbypass bench``."""
    p.add_argument("--seconds", type=float, default=2.0, help="time per configuration")
    p.add_argument(
        "--batches", default="1,16,64,256", help="comma-separated batch sizes (default 1,16,64,256)"
    )
    p.add_argument("--size", type=int, default=60, help="frame size (60..1514)")
    p.add_argument("--plot", metavar="PNG", help="draw the comparison into this PNG file")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")


def run(args: argparse.Namespace) -> int:
    """Run ``kbypass bench``; returns the exit status."""
    if os.geteuid() != 0:
        print(
            "kbypass bench creates network namespaces and AF_XDP sockets: run it as root",
            file=sys.stderr,
        )
        return 1
    try:
        batches = tuple(int(x) for x in args.batches.split(",") if x.strip())
    except ValueError:
        print("kbypass bench: --batches takes comma-separated integers", file=sys.stderr)
        return 2
    if not batches or not all(1 <= b <= 4096 for b in batches) or not 0.2 <= args.seconds <= 60:
        print("kbypass bench: batch sizes 1..4096, --seconds 0.2..60", file=sys.stderr)
        return 2
    if not 60 <= args.size <= 1514:
        print("kbypass bench: --size 60..1514", file=sys.stderr)
        return 2
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "kbypass bench: --plot needs matplotlib: pip install 'kbypass[plot]'",
                file=sys.stderr,
            )
            return 2
    rows = run_bench(args.seconds, batches, args.size)
    if args.json:
        print(json.dumps([asdict(r) for r in rows], indent=2))
    else:
        print(
            f"{'path':<18} {'batch':>5} {'Mpps':>7} {'mean batch':>10} "
            f"{'µs/batch':>9} {'ns/pkt':>8} {'offered':>8}"
        )
        for r in rows:
            print(
                f"{r.path:<18} {r.batch:>5} {r.pps / 1e6:>7.2f} {r.mean_batch:>10.1f} "
                f"{r.batch_latency_us:>9.1f} {r.per_packet_ns:>8.0f} {r.offered_pps / 1e6:>8.2f}"
            )
    if args.plot:
        plot(rows, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0
