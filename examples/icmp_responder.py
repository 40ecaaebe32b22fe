"""Own an IPv4 and an IPv6 address the kernel does not have, in a Pipeline handler.

ARP, Neighbor Solicitations and pings (ICMP and ICMPv6 echo) are answered in place.

    sudo python examples/icmp_responder.py --iface eth0 --ipv4 192.0.2.77 --ipv6 2001:db8::77
    sudo python examples/icmp_responder.py --bench   # veth pair: the kernel's ping answered
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

import kbypass

OWNED = "ether proto arp or icmp or icmp6"  # what the XDP filter sends to the handler


class Responder:
    """The batch handler: answers for ``ipv4`` and ``ipv6`` at ``mac``, counts what it did."""

    def __init__(self, mac: str, ipv4: str, ipv6: str) -> None:
        self.mac, self.ipv4, self.ipv6 = mac, ipv4, ipv6
        self.counts = {"arp": 0, "na": 0, "echo": 0, "ignored": 0}

    def __call__(self, batch: kbypass.Batch) -> None:
        # Each kind of reply over the frames not answered yet, in place, in Rust: a reply may
        # grow into the rest of its frame (a Neighbor Advertisement can be 8 bytes longer than
        # its solicitation); a frame a kind does not answer is left as it was.
        todo = np.ones(len(batch), dtype=bool)
        for count, kind, ip in (
            ("arp", "arp", self.ipv4),
            ("na", "neighbor_advert", self.ipv6),
            ("echo", "icmp_echo", None),
        ):
            if ip is None:
                done = batch.reply(kind, todo)
            else:
                done = batch.reply(kind, todo, mac=self.mac, ip=ip)
            self.counts[count] += int(done.sum())
            todo &= ~done
        self.counts["ignored"] += int(todo.sum())  # e.g. a ping to another address: DROP
        batch.verdicts[~todo] = kbypass.TX


def serve(iface: str, mac: str, ipv4: str, ipv6: str, duration: float | None) -> None:
    responder = Responder(mac, ipv4, ipv6)
    with kbypass.Pipeline(iface, responder, filter=OWNED) as p:
        p.run(duration=duration)
    print(f"answered: {responder.counts}")


def bench() -> int:
    """Answer ping on a veth pair: b's kernel has no address, the handler owns two."""
    from kbypass.testing import VethPair

    ipv4, ipv6 = "198.18.0.77", "fd00::77"
    with VethPair(ipv6=True) as pair:
        pair.run("b", "ip", "addr", "flush", "dev", pair.b.ifname)  # b's kernel owns nothing
        pair.run("a", "ip", "addr", "add", "fd00::1/64", "dev", pair.a.ifname, "nodad")
        responder = Responder(pair.b.mac, ipv4, ipv6)
        with pair.enter("b"):  # the Pipeline's port opens inside namespace b
            p = kbypass.Pipeline(
                pair.b.ifname, responder, filter=OWNED, mode="copy", cpus=False, progress=False
            )
        ok = True
        with p:
            p.start()
            for flag, target in (("-4", ipv4), ("-6", ipv6)):
                r = pair.run("a", "ping", flag, "-c3", "-i0.2", "-W2", target, check=False)
                summary = [ln for ln in r.stdout.splitlines() if "packets transmitted" in ln]
                print(f"ping {flag} {target}: {summary[0] if summary else r.stderr.strip()}")
                ok = ok and r.returncode == 0 and " 3 received" in r.stdout
            p.stop()
            totals = p.totals()
    print(f"answered: {responder.counts}")
    print(f"pipeline: rx={totals['rx']} tx={totals['tx']} errors={totals['handler_errors']}")
    print("OK: every ping answered" if ok else "FAILED: pings went unanswered")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Own addresses the kernel does not have.")
    ap.add_argument("--iface", help="the interface to answer on")
    ap.add_argument("--ipv4", default="198.18.0.77", help="the IPv4 address to own")
    ap.add_argument("--ipv6", default="fd00::77", help="the IPv6 address to own")
    ap.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
    ap.add_argument("--bench", action="store_true", help="run against ping on a veth pair")
    args = ap.parse_args(argv)
    if args.bench:
        return bench()
    if not args.iface:
        ap.error("give --iface IFACE or --bench")
    mac = Path(f"/sys/class/net/{args.iface}/address").read_text().strip()
    serve(args.iface, mac, args.ipv4, args.ipv6, args.duration)
    return 0


if __name__ == "__main__":
    sys.exit(main())
