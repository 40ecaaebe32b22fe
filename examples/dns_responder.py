"""An authoritative DNS responder for a dict of names, in a Pipeline handler.

A/AAAA queries to UDP port 53 are answered in place with ``batch.reply("udp", ...)``, and ARP
and Neighbor Solicitations for its own addresses (which the kernel does not have) too.

    sudo python examples/dns_responder.py --iface eth0 --ipv4 192.0.2.53 --ipv6 2001:db8::53
    sudo python examples/dns_responder.py --bench   # veth pair: dig's queries answered
"""

from __future__ import annotations

import argparse
import socket
import sys
from pathlib import Path

import numpy as np
from dns_codec import FORMERR, Zone

import kbypass
from kbypass import packet
from kbypass.testing import VethPair

NAMES = {
    "www.example.test": ["198.18.1.10", "fd00::10"],
    "mail.example.test": ["198.18.1.25"],
}
OWNED = "ether proto arp or icmp6 or udp dst port 53"  # what the XDP filter lets through


class DnsResponder:
    """The batch handler: DNS from ``zone``, ARP/NA for ``ipv4``/``ipv6`` at ``mac``."""

    def __init__(self, zone: Zone, mac: str, ipv4: str, ipv6: str) -> None:
        self.zone, self.mac, self.ipv4, self.ipv6 = zone, mac, ipv4, ipv6
        self.counts = {"dns": 0, "arp": 0, "na": 0, "not_answered": 0}

    def __call__(self, batch: kbypass.Batch) -> None:
        h = batch.headers
        dns = (h["dst_port"] == 53) & (h["proto"] == packet.IPPROTO_UDP)
        dns &= (h["flags"] & (packet.FLAG_L4 | packet.FLAG_FRAGMENT)) == packet.FLAG_L4
        answered = np.zeros(len(batch), dtype=bool)
        for i in np.flatnonzero(dns).tolist():
            start = int(h["payload_off"][i])
            query = bytes(batch.frame(i)[start : start + int(h["payload_len"][i])])
            answer = self.zone.answer(query)  # None: not worth an answer (counted there)
            if answer is not None:
                # The reply, usually longer than the query, grows into the rest of the frame;
                # a frame it cannot answer (no room, sent to broadcast) is left as it was.
                one = np.zeros(len(batch), dtype=bool)
                one[i] = True
                answered |= batch.reply("udp", one, payload=answer)
        self.counts["dns"] += int(answered.sum())
        todo = ~dns
        for count, kind, ip in (("arp", "arp", self.ipv4), ("na", "neighbor_advert", self.ipv6)):
            done = batch.reply(kind, todo, mac=self.mac, ip=ip)  # in place, for our addresses
            self.counts[count] += int(done.sum())
            todo &= ~done
            answered |= done
        self.counts["not_answered"] += len(batch) - int(answered.sum())  # DROP, the default
        batch.verdicts[answered] = kbypass.TX


def serve(iface: str, mac: str, ipv4: str, ipv6: str, duration: float | None) -> None:
    responder = DnsResponder(Zone(NAMES), mac, ipv4, ipv6)
    with kbypass.Pipeline(iface, responder, filter=OWNED) as p:
        p.run(duration=duration)
    print(f"answered: {responder.counts}, DNS: {responder.zone.counts}")


def dig(pair: VethPair, *args: str) -> list[str]:
    """Run ``dig +short`` in namespace a; return its answer section."""
    r = pair.run("a", "dig", "+short", "+tries=2", "+time=2", *args, check=False)
    return r.stdout.split()


def malformed_query(pair: VethPair, server: str) -> int | None:
    """Send a query whose question is cut short from namespace a; the reply's RCODE."""
    query = bytes.fromhex("beef 0100 0001 0000 0000 0000") + b"\x07exa"  # label cut short
    with pair.enter("a"):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.settimeout(2)
        s.sendto(query, (server, 53))
        try:
            reply = s.recv(512)
        except TimeoutError:
            return None
    return reply[3] & 0xF if reply[:2] == b"\xbe\xef" else None


def bench() -> int:
    """Answer dig on a veth pair: b's kernel has no address, the handler owns two."""
    ipv4, ipv6 = "198.18.0.53", "fd00::53"
    with VethPair(ipv6=True) as pair:
        pair.run("b", "ip", "addr", "flush", "dev", pair.b.ifname)
        pair.run("a", "ip", "addr", "add", "fd00::1/64", "dev", pair.a.ifname, "nodad")
        responder = DnsResponder(Zone(NAMES), pair.b.mac, ipv4, ipv6)
        with pair.enter("b"):
            p = kbypass.Pipeline(
                pair.b.ifname, responder, filter=OWNED, mode="copy", cpus=False, progress=False
            )
        with p:
            p.start()
            got = {
                "A": dig(pair, f"@{ipv4}", "www.example.test", "A"),
                "AAAA": dig(pair, f"@{ipv4}", "www.example.test", "AAAA"),
                "AAAA over IPv6": dig(pair, f"@{ipv6}", "www.example.test", "AAAA"),
                "nxdomain": dig(pair, f"@{ipv4}", "nope.example.test", "A"),
            }
            rcode = malformed_query(pair, ipv4)
            p.stop()
    want = {"A": ["198.18.1.10"], "AAAA": ["fd00::10"], "AAAA over IPv6": ["fd00::10"]}
    want["nxdomain"] = []
    ok = True
    for what, answer in got.items():
        good = answer == want[what]
        ok &= good
        print(f"dig www.example.test {what}: {answer} {'ok' if good else 'WRONG'}")
    print(f"malformed query: rcode {rcode} {'(FORMERR) ok' if rcode == FORMERR else 'WRONG'}")
    ok &= rcode == FORMERR
    print(f"answered: {responder.counts}, DNS: {responder.zone.counts}")
    print("OK: every query answered" if ok else "FAILED: wrong or missing answers")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Answer DNS A/AAAA queries from a dict of names.")
    ap.add_argument("--iface", help="the interface to answer on")
    ap.add_argument("--ipv4", default="198.18.0.53", help="the IPv4 address to own")
    ap.add_argument("--ipv6", default="fd00::53", help="the IPv6 address to own")
    ap.add_argument("--duration", type=float, help="seconds to run (default: until Ctrl-C)")
    ap.add_argument("--bench", action="store_true", help="run against dig on a veth pair")
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
