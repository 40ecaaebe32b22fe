"""A learning firewall: block sources over a packet rate in the kernel.

A Pipeline handler counts UDP packets per IPv4 source per second, and a source over the
threshold is blocked in the kernel (``XdpTable.block_sources``), so its later packets are
dropped by XDP before they reach Python.

    sudo python examples/learning_firewall.py --iface eth0 --port 9000 --threshold 10000
    sudo python examples/learning_firewall.py --bench   # veth pair: a heavy and a light sender
"""

from __future__ import annotations

import argparse
import ipaddress
import sys
import time
from collections import Counter

import numpy as np

import kbypass
from kbypass.testing import TrafficGenerator, VethPair


class Firewall:
    """The batch handler: blocks for ``seconds`` each source sending over ``threshold``/s."""

    def __init__(self, table: kbypass.XdpTable, threshold: int, seconds: float) -> None:
        self.table, self.threshold, self.seconds = table, threshold, seconds
        self.window = Counter[int]()  # packets per source in the current second
        self.window_start = time.monotonic()
        self.seen = Counter[str]()  # packets per source that reached the handler
        self.blocked: dict[str, float] = {}  # source -> when we blocked it

    def __call__(self, batch: kbypass.Batch) -> None:
        now = time.monotonic()
        if now - self.window_start >= 1.0:
            self.window.clear()
            self.window_start = now
        src = batch.headers["src_ip4"]  # host-order ints; 0 for non-IPv4 frames
        sources, counts = np.unique(src[src != 0], return_counts=True)
        for s, n in zip(sources.tolist(), counts.tolist()):
            self.window[s] += n
            self.seen[str(ipaddress.IPv4Address(s))] += n
        heavy = [s for s in sources.tolist() if self.window[s] > self.threshold]
        if heavy:
            mask = np.isin(src, heavy)
            for addr in self.table.block_sources(batch, mask, seconds=self.seconds):
                if addr not in self.blocked:
                    self.blocked[addr] = now
                    print(f"blocked {addr} for {self.seconds:g} s (over {self.threshold}/s)")
        batch.verdicts[:] = kbypass.DROP  # a real service would answer or forward here


def report(table: kbypass.XdpTable, allow: int, firewall: Firewall) -> None:
    print(f"reached the handler: {dict(firewall.seen)}")
    print(f"table: allowed to the socket {table.stats()[allow][0]} packets")
    for b in table.blocks():
        print(f"table: block {b.addr} dropped {b.packets} packets in the kernel")


def serve(iface: str, port: int, threshold: int, seconds: float, duration: float | None) -> None:
    with kbypass.XdpTable(max_rules=64, default="pass") as table:
        allow = table.add(f"udp dst port {port}", "allow")  # the rest goes to the kernel
        firewall = Firewall(table, threshold, seconds)
        with kbypass.Pipeline(iface, firewall, table=table) as p:
            p.run(duration=duration)
        report(table, allow, firewall)


def bench() -> int:
    """Run a heavy (5000/s) and a light (50/s) sender for 2 s; the threshold is 1000/s."""
    heavy, light = "198.18.0.100", "198.18.0.101"  # written into the frames: no configuration
    with VethPair() as pair, kbypass.XdpTable(max_rules=64, default="pass") as table:
        allow = table.add("udp dst port 9000", "allow")
        firewall = Firewall(table, threshold=1000, seconds=30)
        with pair.enter("b"):
            p = kbypass.Pipeline(
                pair.b.ifname, firewall, table=table, mode="copy", cpus=False, progress=False
            )
        with p:
            p.start()
            gens = [TrafficGenerator(pair, src_ip=ip, batch_size=8) for ip in (heavy, light)]
            gens[0].start(count=10_000, rate=5000)
            gens[1].start(count=100, rate=50)
            sent = [g.wait(timeout=30).packets for g in gens]
            deadline = time.monotonic() + 3  # let the handler see the last frames
            while firewall.seen[light] < sent[1] and time.monotonic() < deadline:
                time.sleep(0.05)
            time.sleep(0.2)
            p.stop()
        print(f"sent: {heavy} {sent[0]}, {light} {sent[1]}")
        report(table, allow, firewall)
        dropped = {b.addr: b.packets for b in table.blocks()}
    ok = (
        list(firewall.blocked) == [heavy]
        and dropped.get(heavy, 0) > sent[0] // 2  # most of the heavy one never reached Python
        and firewall.seen[heavy] + dropped[heavy] <= sent[0]
        and firewall.seen[light] == sent[1]  # the light one kept arriving
    )
    print("OK: heavy sender blocked in the kernel" if ok else "FAILED")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Block sources over a packet rate in the kernel.")
    ap.add_argument("--iface", help="the interface to police")
    ap.add_argument("--port", type=int, default=9000, help="UDP port the handler sees")
    ap.add_argument("--threshold", type=int, default=10_000, help="packets per second")
    ap.add_argument("--seconds", type=float, default=60, help="how long a block lasts")
    ap.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
    ap.add_argument("--bench", action="store_true", help="run two senders on a veth pair")
    args = ap.parse_args(argv)
    if args.bench:
        return bench()
    if not args.iface:
        ap.error("give --iface IFACE or --bench")
    serve(args.iface, args.port, args.threshold, args.seconds, args.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
