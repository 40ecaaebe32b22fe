"""Answer each UDP request with a burst of new datagrams made from a packet template.

Every request to port 9000 gets ``--burst`` numbered datagrams back ("chunk 3/8"). A batch's
answers are one ``batch.emit_template`` call: the addresses, ports and MACs of the askers are
NumPy columns, the payloads a list, and each frame (lengths, IPv4 and UDP checksums included)
is written in Rust into a free UMEM frame; the requests themselves are dropped.

    sudo python examples/udp_burst.py --iface eth0 --ip 192.0.2.9
    sudo python examples/udp_burst.py --bench   # veth pair: a kernel UDP client asks
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

import numpy as np

import kbypass
from kbypass.packet import Template

PORT = 9000


class Burst:
    """The batch handler: ``burst`` datagrams back to each request's sender, counted."""

    def __init__(self, mac: str, ip: str, burst: int) -> None:
        self.tpl = Template(src_mac=mac, src_ip=ip, src_port=PORT)
        self.burst = burst
        self.counts = {"requests": 0, "sent": 0, "not_sent": 0, "deferred": 0}

    def __call__(self, batch: kbypass.Batch) -> None:
        h = batch.headers
        asks = np.flatnonzero((h["dst_port"] == PORT) & (h["ip_version"] == 4))
        # One batch emits at most max(batch size, 64) frames: answer what fits, count the rest.
        fit = max(len(batch), 64) // self.burst
        self.counts["deferred"] += max(0, asks.size - fit)
        asks = asks[:fit]
        batch.verdicts[:] = kbypass.DROP
        if asks.size == 0:
            return
        k, n = self.burst, asks.size * self.burst
        macs = [int.from_bytes(bytes(batch.frame(int(i))[6:12]), "big") for i in asks]
        fields = {
            "dst_mac": np.repeat(np.array(macs, dtype=np.uint64), k),
            "dst_ip": np.repeat(h["src_ip4"][asks], k),
            "dst_port": np.repeat(h["src_port"][asks], k),
            "payload": [b"chunk %d/%d" % (j + 1, k) for _ in asks for j in range(k)],
        }
        sent = batch.emit_template(self.tpl, n, fields=fields)
        self.counts["requests"] += int(asks.size)
        self.counts["sent"] += sent
        self.counts["not_sent"] += n - sent  # no free UMEM frame: also in stats()["emit_failed"]


def bench(burst: int) -> int:
    """Four requests from a kernel UDP socket on a veth pair; every chunk must come back."""
    from kbypass.testing import VethPair

    with VethPair() as pair:
        handler = Burst(pair.b.mac, pair.b.ip, burst)
        with pair.enter("b"):
            p = kbypass.Pipeline(
                pair.b.ifname, handler, filter=f"udp dst port {PORT}", mode="copy", cpus=False
            )
        with pair.enter("a"):
            client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            client.bind((pair.a.ip, 0))
            client.settimeout(3)
        ok = True
        with p:
            p.start()
            for r in range(4):
                client.sendto(b"request %d" % r, (pair.b.ip, PORT))
                got = sorted(client.recvfrom(2048) for _ in range(burst))
                want = sorted(
                    (b"chunk %d/%d" % (j + 1, burst), (pair.b.ip, PORT)) for j in range(burst)
                )
                print(f"request {r}: {len(got)} datagrams {'ok' if got == want else 'WRONG'}")
                ok = ok and got == want
            p.stop()
            totals = p.totals()
    print(f"handler: {handler.counts}")
    print(f"pipeline: emitted={totals['emitted']} emit_failed={totals['emit_failed']}")
    print("OK: every chunk arrived" if ok else "FAILED: chunks missing or wrong")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Answer UDP requests with bursts from a template.")
    ap.add_argument("--iface", help="the interface to answer on")
    ap.add_argument("--ip", help="the interface's IPv4 address (the answers' source)")
    ap.add_argument("--burst", type=int, default=8, help="datagrams per request (1..64)")
    ap.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
    ap.add_argument("--bench", action="store_true", help="run against a client on a veth pair")
    args = ap.parse_args(argv)
    if not 1 <= args.burst <= 64:
        ap.error("--burst must be 1..64")
    if args.bench:
        return bench(args.burst)
    if not args.iface or not args.ip:
        ap.error("give --iface IFACE --ip ADDRESS, or --bench")
    mac = Path(f"/sys/class/net/{args.iface}/address").read_text().strip()
    handler = Burst(mac, args.ip, args.burst)
    with kbypass.Pipeline(args.iface, handler, filter=f"udp dst port {PORT}") as p:
        p.run(duration=args.duration)
    print(handler.counts)
    return 0


if __name__ == "__main__":
    sys.exit(main())
