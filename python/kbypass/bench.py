"""``kbypass bench``: processor throughput by batch size, against the kernel's UDP socket.

On a veth bench of its own (as ``kbypass demo``), with the live-frames generator on one core and
the receiver pinned to the other, it runs the demo's NumPy handler (packets per flow) through a
:class:`kbypass.Pipeline` at several batch sizes, and the same handler fed by a kernel UDP socket,
each for the same time, and prints packets/s, the mean batch and the time per batch and per
packet. ``--plot out.png`` draws the comparison (needs matplotlib: ``pip install 'kbypass[plot]'``).

``--handler empty`` measures the pipeline's own cost instead: a handler that does nothing, so the
time per batch is receive, the Python call and the verdicts applied (with ``--batches 1``: the
cost of a batch of one).

``--latency`` measures request/response latency instead (:mod:`kbypass.pingpong`): sockperf's
ping-pong and under-load clients and the capacity run (the XDP generator offers sockperf requests
faster than the server answers, an XDP_DROP counter counts the answers; ``--offered`` sets the
rate, default as fast as it goes) against a Pipeline answering them in each latency mode and
against the kernel's UDP server (``sockperf server``), ``--rounds`` times, with each figure's
ratio to the kernel's of the same round; and against the in-kernel XDP echo (``XDP_TX``, no
user space at all: the floor no server beats on this bench; ``--no-xdp-echo`` leaves it out).
"""

from __future__ import annotations

import argparse
import json
import math
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


HANDLERS = ("flows", "empty")


def _pipeline_row(ifname: str, batch: int, seconds: float, cpu: int, which: str = "flows") -> Row:
    from kbypass import DROP, Pipeline

    counts = np.zeros(256, dtype=np.int64)

    def flows(b: Any) -> None:
        count_flows(b.headers["src_port"], counts)
        b.verdicts[:] = DROP

    def empty(b: Any) -> None:
        return None  # every frame keeps the default verdict, DROP

    handler = flows if which == "flows" else empty
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
    seconds: float = 2.0,
    batches: tuple[int, ...] = (1, 16, 64, 256),
    size: int = 60,
    handler: str = "flows",
) -> list[Row]:
    """Measure the Pipeline at each batch size and the kernel socket; returns the rows.

    ``handler``: "flows" (the demo's NumPy flow count) or "empty" (the pipeline's own cost).
    """
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
                row = _pipeline_row(pair.b.ifname, b, seconds, rx_cpu, handler)
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
    plt = _pyplot()
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


def plot_latency(results: list[Any], path: str) -> None:
    """Draw round-trip percentiles and answers per second under load per server into ``path``.

    Under load: sockperf's under-load client and the capacity run (XDP generator), side by side.
    """
    plt = _pyplot()
    labels = [r.server.replace(" (", "\n(") for r in results]
    colors = [
        "tab:gray" if r.server.startswith("kernel") else
        "tab:green" if r.server.startswith("in-kernel") else "tab:blue"
        for r in results
    ]  # fmt: skip
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    width = 0.27
    for k, (metric, name) in enumerate(
        (("rtt_p50_us", "p50"), ("rtt_p99_us", "p99"), ("rtt_p999_us", "p99.9"))
    ):
        xs = [i + (k - 1) * width for i in range(len(results))]
        ax1.bar(xs, [r.spread(metric)[1] for r in results], width, label=name)
    ax1.set_xticks(range(len(results)), labels, fontsize=7)
    ax1.set_ylabel("round trip, µs (median over rounds)")
    ax1.set_yscale("log")
    ax1.set_title("sockperf ping-pong: UDP round trip")
    ax1.legend()
    half = 0.4
    for k, (metric, name, hatch) in enumerate(
        (
            ("load_msgs_per_s", "sockperf under-load (--mps max)", ""),
            ("capacity_aps", "capacity (XDP generator, offered load > server)", "//"),
        )
    ):
        xs = [i + (k - 0.5) * half for i in range(len(results))]
        ys = [r.spread(metric)[1] / 1e3 for r in results]
        ax2.bar(xs, ys, half, color=colors, hatch=hatch, edgecolor="black", label=name)
    ax2.set_xticks(range(len(results)), labels, fontsize=7)
    ax2.set_ylabel("answers per second, thousands")
    ax2.set_yscale("log")
    ax2.set_title("Answers under load")
    ax2.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _pyplot() -> Any:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as e:
        raise ImportError(
            "--plot needs matplotlib: pip install 'kbypass[plot]' (or pip install matplotlib)"
        ) from e
    return plt


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``kbypass bench``."""
    p.add_argument(
        "--seconds",
        type=float,
        default=2.0,
        help="time per configuration (--latency: per sockperf run, whole seconds)",
    )
    p.add_argument(
        "--batches", default="1,16,64,256", help="comma-separated batch sizes (default 1,16,64,256)"
    )
    p.add_argument("--size", type=int, default=60, help="frame size (60..1514)")
    p.add_argument("--plot", metavar="PNG", help="draw the comparison into this PNG file")
    p.add_argument("--json", action="store_true", help="print the rows as JSON")
    p.add_argument(
        "--handler",
        choices=HANDLERS,
        default="flows",
        help="flows: the demo's NumPy flow count; empty: a handler doing nothing (the "
        "pipeline's own cost per batch)",
    )
    p.add_argument(
        "--latency",
        action="store_true",
        help="UDP request/response latency instead: sockperf ping-pong and under-load, and the "
        "capacity run (XDP generator), against a Pipeline echo in each latency mode and the "
        "kernel's UDP server (needs sockperf)",
    )
    p.add_argument(
        "--rounds", type=int, default=1, help="--latency: measure every server this many times"
    )
    p.add_argument(
        "--no-xdp-echo",
        action="store_true",
        help="--latency: leave out the in-kernel XDP echo (XDP_TX), the floor no server can beat",
    )
    p.add_argument(
        "--offered",
        type=float,
        metavar="PPS",
        help="--latency: requests per second the capacity run offers (default: as fast as the "
        "XDP generator goes)",
    )
    p.add_argument(
        "--modes",
        default="adaptive,busy,sleep",
        help="--latency: comma-separated Pipeline latency modes (default adaptive,busy,sleep)",
    )


def _run_latency(args: argparse.Namespace) -> int:
    from kbypass.pingpong import LATENCY_MODES, SockperfMissingError, run_latency, summarize

    names = [m.strip() for m in args.modes.split(",") if m.strip()]
    modes = [m for name in names for m in LATENCY_MODES if m == name]
    if not names or len(modes) != len(names):
        print(
            f"kbypass bench: --modes takes a comma-separated list of {', '.join(LATENCY_MODES)}",
            file=sys.stderr,
        )
        return 2
    if not 1 <= args.rounds <= 100 or not 1 <= args.seconds <= 60:
        print("kbypass bench --latency: --rounds 1..100, --seconds 1..60", file=sys.stderr)
        return 2
    if args.offered is not None and not (math.isfinite(args.offered) and args.offered > 0):
        print("kbypass bench --latency: --offered takes requests per second > 0", file=sys.stderr)
        return 2
    try:
        results = run_latency(
            rounds=args.rounds,
            seconds=round(args.seconds),
            modes=modes,
            xdp_echo=not args.no_xdp_echo,
            offered=args.offered,
        )
    except SockperfMissingError as e:
        print(f"kbypass bench: {e}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
    else:
        print(summarize(results))
    if args.plot:
        plot_latency(results, args.plot)
        print(f"plot written to {args.plot}", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    """Run ``kbypass bench``; returns the exit status."""
    if os.geteuid() != 0:
        print(
            "kbypass bench creates network namespaces and AF_XDP sockets: run it as root",
            file=sys.stderr,
        )
        return 1
    if args.plot:
        try:
            import matplotlib  # noqa: F401
        except ImportError:
            print(
                "kbypass bench: --plot needs matplotlib: pip install 'kbypass[plot]'",
                file=sys.stderr,
            )
            return 2
    if args.latency:
        return _run_latency(args)
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
    rows = run_bench(args.seconds, batches, args.size, args.handler)
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
