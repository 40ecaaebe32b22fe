"""A VXLAN load balancer: UDP flows spread over backends by a hash of their source.

Each packet is encapsulated whole (outer Ethernet + IPv4 + UDP 4789 + VXLAN, 50 bytes
pushed in front with ``batch.adjust_head(-50)``) and sent back out of the interface. The path
to the backends needs an MTU 50 bytes larger than the clients' packets; IPv6 clients are
hashed by their source port alone (``src_ip4`` is 0 for them).

    sudo python examples/vxlan_balancer.py --iface eth0 --ip 192.0.2.1 \\
        --gateway-mac 02:00:00:00:00:01 --backend 192.0.2.11 --backend 192.0.2.12
    sudo python examples/vxlan_balancer.py --bench   # veth pair: 8 flows over 2 backends
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import struct
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np

import kbypass
from kbypass import packet
from kbypass.testing import VethPair

VNI = 42
OUTER = 14 + 20 + 8 + 8  # Ethernet + IPv4 + UDP + VXLAN


class Balancer:
    """The batch handler: encapsulates UDP to ``port`` towards ``backends[hash % n]``."""

    def __init__(self, port: int, mac: str, ip: str, gateway_mac: str, backends: list[str]):
        self.port = port
        # The outer Ethernet addresses: to the next hop, from us.
        self.macs = bytes.fromhex((gateway_mac + mac).replace(":", ""))
        self.ip = ipaddress.IPv4Address(ip).packed
        self.backends = [ipaddress.IPv4Address(b).packed for b in backends]
        self.counts = [0] * len(backends)

    def __call__(self, batch: kbypass.Batch) -> None:
        h = batch.headers
        mine = (h["proto"] == packet.IPPROTO_UDP) & (h["dst_port"] == self.port)
        # One hash per flow (source address and port), in NumPy for the whole batch.
        flow = (h["src_ip4"].astype(np.uint64) << 16) | h["src_port"]
        flow = (flow * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(40)  # 24 well-mixed bits
        batch.adjust_head(-OUTER, mine)  # 50 zeroed bytes in front of each inner frame
        for i in np.flatnonzero(mine).tolist():
            f = batch.frame(i)  # a fresh view: it starts at the outer header now
            n, key = len(f), int(flow[i])
            backend = key % len(self.backends)
            self.counts[backend] += 1
            ip = struct.pack(
                "!BBHHHBBH4s4s", 0x45, 0, n - 14, 0, 0x4000, 64, 17, 0, self.ip,
                self.backends[backend],
            )  # fmt: skip
            udp = struct.pack("!HHHH", 49152 + (key & 0x3FFF), 4789, n - 34, 0)  # entropy
            vxlan = struct.pack("!II", 0x08000000, VNI << 8)
            f[:OUTER] = np.frombuffer(self.macs + b"\x08\x00" + ip + udp + vxlan, np.uint8)
        batch.fix_checksums(mine)  # the outer IPv4 header and UDP checksums
        batch.verdicts[:] = np.where(mine, kbypass.TX, kbypass.DROP)


def captured_vxlan(sniffer: socket.socket, want: int) -> list[bytes]:
    """Return the VXLAN frames the packet socket sees on a's veth (up to ``want``, 3 s)."""
    frames: list[bytes] = []
    deadline = time.monotonic() + 3
    while len(frames) < want and time.monotonic() < deadline:
        try:
            f = sniffer.recv(4096)
        except TimeoutError:
            continue
        if f[12:14] == b"\x08\x00" and f[23] == 17 and f[36:38] == b"\x12\xb5":
            frames.append(f)
    return frames


def bench() -> int:
    """Send 8 UDP flows from namespace a to b's port 7000, spread over two backends."""
    backends = ["198.18.0.11", "198.18.0.12"]  # outer destinations, on a's segment
    flows, per_flow = 8, 5
    with VethPair() as pair:
        balancer = Balancer(7000, pair.b.mac, pair.b.ip, pair.a.mac, backends)
        with pair.enter("b"):
            p = kbypass.Pipeline(
                pair.b.ifname, balancer, filter="udp dst port 7000", mode="copy", cpus=False,
                progress=False,
            )  # fmt: skip
        with pair.enter("a"):  # the client's sockets and a packet socket watching a's veth
            sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
            sniffer.bind((pair.a.ifname, 0))
            clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(flows)]
        sniffer.settimeout(0.2)
        with p:
            p.start()
            for k, c in enumerate(clients):
                c.bind((pair.a.ip, 40000 + k))  # fixed ports: a deterministic spread
                for j in range(per_flow):
                    c.sendto(b"flow %d packet %d" % (k, j), (pair.b.ip, 7000))
            got = captured_vxlan(sniffer, flows * per_flow)
            p.stop()
        for s in (sniffer, *clients):
            s.close()
    by_flow: dict[int, set[str]] = defaultdict(set)
    payloads = []
    for f in got:
        inner = f[OUTER:]
        by_flow[struct.unpack_from("!H", inner, 34)[0]].add(socket.inet_ntoa(f[30:34]))
        payloads.append(inner[42:])
    valid = packet.checksums_ok(*packet.frames_from_bytes(got)) if got else np.array([])
    for port, where in sorted(by_flow.items()):
        print(f"flow from port {port} -> backend {', '.join(sorted(where))}")
    print(f"encapsulated per backend: {dict(zip(backends, balancer.counts))}")
    sent = sorted(b"flow %d packet %d" % (k, j) for k in range(flows) for j in range(per_flow))
    ok = (
        sorted(payloads) == sent  # every packet arrived, inner frame intact
        and bool(valid.all())  # outer checksums verify
        and all(len(w) == 1 for w in by_flow.values())  # a flow sticks to its backend
        and all(balancer.counts)  # both backends get flows
    )
    print(f"captured {len(got)} VXLAN frames, checksums ok: {bool(valid.all())}")
    print("OK: flows spread over both backends" if ok else "FAILED")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Spread UDP flows over VXLAN backends.")
    ap.add_argument("--iface", help="the interface to balance on")
    ap.add_argument("--port", type=int, default=7000, help="the UDP port balanced")
    ap.add_argument("--ip", help="this host's IPv4 address (the outer source)")
    ap.add_argument("--gateway-mac", help="the outer frames' destination MAC (next hop)")
    ap.add_argument("--backend", action="append", default=[], help="a backend's IPv4 address")
    ap.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
    ap.add_argument("--bench", action="store_true", help="run 8 flows on a veth pair")
    args = ap.parse_args(argv)
    if args.bench:
        return bench()
    if not (args.iface and args.ip and args.gateway_mac and args.backend):
        ap.error("give --iface, --ip, --gateway-mac and --backend (twice or more), or --bench")
    mac = Path(f"/sys/class/net/{args.iface}/address").read_text().strip()
    balancer = Balancer(args.port, mac, args.ip, args.gateway_mac, args.backend)
    with kbypass.Pipeline(args.iface, balancer, filter=f"udp dst port {args.port}") as p:
        p.run(duration=args.duration)
    print(f"encapsulated per backend: {dict(zip(args.backend, balancer.counts))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
