"""``kbypass demo``: a Python packet processor on AF_XDP, side by side with the kernel's socket.

With no interface named, the demo builds its own bench: two network namespaces joined by a veth
pair (198.18.0.1 ↔ 198.18.0.2), the kernel's XDP live-frames generator sending UDP from one end,
and the processor below on the other end — first fed by a ``kbypass.Pipeline`` (an AF_XDP socket
polled by a pinned Rust worker that takes the GIL once per batch), then by a kernel UDP socket,
for the same time. It prints packets/s for both, cleans up, and exits 0.

The processor (the same function on both paths) counts packets per UDP flow with NumPy::

    def count_flows(src_ports: np.ndarray, counts: np.ndarray) -> None:
        counts += np.bincount(src_ports & 0xFF, minlength=256)

With ``--iface IF --queue Q`` it runs the AF_XDP half on a real NIC (traffic is yours to send).
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Handler = Callable[[npt.NDArray[np.uint16], npt.NDArray[np.int64]], None]

FLOWS = 64
DST_PORT = 9000


def count_flows(src_ports: npt.NDArray[np.uint16], counts: npt.NDArray[np.int64]) -> None:
    """Count packets per UDP flow (by source port): the demo's processor."""
    counts += np.bincount(src_ports & 0xFF, minlength=256)


@dataclass
class PathResult:
    """What one path delivered to the processor."""

    name: str
    packets: int
    seconds: float
    flows_seen: int
    offered_pps: float

    @property
    def pps(self) -> float:
        """Packets per second that reached the processor."""
        return self.packets / self.seconds if self.seconds > 0 else 0.0


def _af_xdp_path(
    ifname: str, queue: int, seconds: float, handler: Handler, batch: int, cpu: int | None
) -> tuple[int, npt.NDArray[np.int64]]:
    """Feed ``handler`` from a kbypass Pipeline: a pinned Rust poll loop, the GIL once a batch."""
    from kbypass import Pipeline

    counts = np.zeros(256, dtype=np.int64)

    def on_batch(b: Any) -> None:  # verdicts stay DROP: frames go straight back to FILL
        handler(b.headers["src_port"], counts)

    with Pipeline(
        ifname,
        on_batch,
        queues=[queue],
        batch=batch,
        filter=f"udp dst port {DST_PORT}",
        cpus=None if cpu is None else [cpu],
        progress=False,
    ) as p:
        totals = p.run(duration=seconds)
    return int(totals["rx"]), counts


def kernel_udp_batches(
    ip: str, seconds: float, batch: int, on_batch: Callable[[npt.NDArray[np.uint16]], None]
) -> tuple[int, float]:
    """Receive UDP on ``ip:DST_PORT`` with a kernel socket for ``seconds``.

    The source ports go to ``on_batch`` every ``batch`` packets; returns (packets, seconds).
    """
    ports = np.zeros(batch, dtype=np.uint16)
    buf = bytearray(2048)
    packets = k = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 << 20)
        s.bind((ip, DST_PORT))
        s.settimeout(0.05)
        t0 = time.monotonic()
        deadline = t0 + seconds
        while time.monotonic() < deadline:
            try:
                _, addr = s.recvfrom_into(buf)
            except TimeoutError:
                continue
            ports[k] = addr[1]
            k += 1
            if k == batch:
                on_batch(ports)
                packets += k
                k = 0
        if k:
            on_batch(ports[:k])
            packets += k
        took = time.monotonic() - t0
    return packets, took


def _kernel_path(
    ip: str, seconds: float, handler: Handler, batch: int
) -> tuple[int, npt.NDArray[np.int64]]:
    counts = np.zeros(256, dtype=np.int64)
    packets, _ = kernel_udp_batches(ip, seconds, batch, lambda ports: handler(ports, counts))
    return packets, counts


def run_veth_demo(seconds: float = 3.0, size: int = 60, batch: int = 256) -> list[PathResult]:
    """Run both paths on a fresh veth bench and return their results."""
    from kbypass import cpu
    from kbypass.testing import TrafficGenerator, VethPair

    allowed = cpu.allowed()
    gen_cpu = allowed[0]
    rx_cpu = allowed[-1]
    results: list[PathResult] = []
    with (
        VethPair() as pair,
        TrafficGenerator(
            pair, side="a", size=size, flows=FLOWS, dst_port=DST_PORT, cpu=gen_cpu
        ) as gen,
    ):
        for name in ("kbypass AF_XDP", "kernel UDP socket"):
            with pair.enter("b"), cpu.pinned(rx_cpu):
                gen.start()
                time.sleep(0.1)  # let the generator reach its rate
                t0 = time.monotonic()
                if name.startswith("kbypass"):
                    n, counts = _af_xdp_path(pair.b.ifname, 0, seconds, count_flows, batch, rx_cpu)
                else:
                    n, counts = _kernel_path(pair.b.ip, seconds, count_flows, 64)
                took = time.monotonic() - t0
                sent = gen.stop()
            results.append(PathResult(name, n, took, int(np.count_nonzero(counts)), sent.pps))
    return results


def _print_results(results: list[PathResult], out: Callable[[str], None]) -> None:
    out(f"{'path':<20} {'packets':>12} {'Mpps':>8} {'flows':>6} {'offered Mpps':>13}")
    for r in results:
        out(
            f"{r.name:<20} {r.packets:>12,} {r.pps / 1e6:>8.2f} {r.flows_seen:>6} "
            f"{r.offered_pps / 1e6:>13.2f}"
        )
    if len(results) == 2 and results[1].pps > 0:
        out(f"\nkbypass delivered {results[0].pps / results[1].pps:.1f}x the kernel socket's rate")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of ``kbypass demo``."""
    p.add_argument("--iface", help="run on this NIC instead of a veth bench (needs --queue)")
    p.add_argument("--queue", type=int, default=0, help="RX queue of --iface (default 0)")
    p.add_argument("--seconds", type=float, default=3.0, help="time per path (default 3)")
    p.add_argument("--size", type=int, default=60, help="frame size on the veth bench (60..1514)")
    p.add_argument("--batch", type=int, default=256, help="frames per processor call")


def run(args: argparse.Namespace) -> int:
    """Run ``kbypass demo``; returns the exit status."""
    if os.geteuid() != 0:
        print(
            "kbypass demo creates network namespaces and AF_XDP sockets: "
            "it needs CAP_NET_ADMIN, CAP_BPF and CAP_SYS_ADMIN: run it as root",
            file=sys.stderr,
        )
        return 1
    if not 0.2 <= args.seconds <= 60 or not 60 <= args.size <= 1514 or not 1 <= args.batch <= 4096:
        print("kbypass demo: --seconds 0.2..60, --size 60..1514, --batch 1..4096", file=sys.stderr)
        return 2
    print(__doc__.split("::", 1)[0].strip().splitlines()[0])
    print("processor (the same function on both paths):\n")
    print("    def count_flows(src_ports, counts):")
    print("        counts += np.bincount(src_ports & 0xFF, minlength=256)\n")
    if args.iface:
        n, counts = _af_xdp_path(
            args.iface, args.queue, args.seconds, count_flows, args.batch, None
        )
        print(
            f"{args.iface} queue {args.queue}: {n:,} packets to UDP port {DST_PORT} in "
            f"{args.seconds:.1f} s ({n / args.seconds / 1e6:.2f} Mpps), "
            f"{int(np.count_nonzero(counts))} flows"
        )
        return 0
    print(
        f"bench: veth pair in two namespaces, {args.size + 4}-byte frames from the XDP "
        f"live-frames generator, {FLOWS} flows, {args.seconds:.0f} s per path\n"
    )
    results = run_veth_demo(args.seconds, args.size, args.batch)
    _print_results(results, print)
    return 0
