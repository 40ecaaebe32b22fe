"""The DNS side of ``dns_responder.py``: answer an A/AAAA query from a dict of names.

Only what an authoritative responder for a handful of names needs (RFC 1035 sections 4.1.1 to
4.1.3, RFC 3596 for AAAA): one question, no compression in the question, answers pointing back
at the question's name with a compression pointer. Anything else gets the right error code
(FORMERR for a malformed query, NOTIMP for another opcode, NXDOMAIN for an unknown name, an
empty NOERROR answer for a known name of another type), and a message too broken to answer
(shorter than a header, or itself a response) gets ``None``: drop it and count it.
"""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field

TYPE_A, TYPE_AAAA, CLASS_IN = 1, 28, 1
NOERROR, FORMERR, NXDOMAIN, NOTIMP = 0, 1, 3, 4
HEADER = struct.Struct("!HHHHHH")


@dataclass
class Zone:
    """A dict of names and what was answered from it.

    ``names`` maps names (lower case, no trailing dot) to their IPv4 and IPv6 addresses.
    """

    names: Mapping[str, list[str]]
    ttl: int = 60
    counts: dict[str, int] = field(
        default_factory=lambda: {"answered": 0, "nxdomain": 0, "formerr": 0, "dropped": 0}
    )

    def answer(self, query: bytes) -> bytes | None:
        """Answer ``query`` (a DNS message); None when it must be dropped."""
        if len(query) < HEADER.size:
            self.counts["dropped"] += 1
            return None
        ident, flags, qd = HEADER.unpack_from(query)[:3]
        if flags & 0x8000:  # a response: never answer one (no loops between responders)
            self.counts["dropped"] += 1
            return None
        rd = flags & 0x0100
        opcode = (flags >> 11) & 0xF
        if opcode != 0:
            return self._error(ident, opcode, rd, NOTIMP)
        parsed = _question(query, HEADER.size) if qd == 1 else None
        if parsed is None:
            self.counts["formerr"] += 1
            return self._error(ident, opcode, rd, FORMERR)
        name, qtype, qclass, end = parsed
        question = query[HEADER.size : end]
        addrs = self.names.get(name)
        if addrs is None or qclass != CLASS_IN:
            self.counts["nxdomain"] += 1
            return _message(ident, rd, NXDOMAIN, question, [])
        want = {TYPE_A: 4, TYPE_AAAA: 6}.get(qtype)
        records = [
            ipaddress.ip_address(a).packed for a in addrs if ipaddress.ip_address(a).version == want
        ]
        answers = [
            struct.pack("!HHHIH", 0xC000 | HEADER.size, qtype, CLASS_IN, self.ttl, len(r)) + r
            for r in records
        ]
        self.counts["answered"] += 1
        return _message(ident, rd, NOERROR, question, answers)

    @staticmethod
    def _error(ident: int, opcode: int, rd: int, rcode: int) -> bytes:
        flags = 0x8000 | 0x0400 | (opcode << 11) | rd | rcode
        return HEADER.pack(ident, flags, 0, 0, 0, 0)


def _message(ident: int, rd: int, rcode: int, question: bytes, answers: list[bytes]) -> bytes:
    flags = 0x8000 | 0x0400 | rd | rcode  # QR, AA
    return HEADER.pack(ident, flags, 1, len(answers), 0, 0) + question + b"".join(answers)


def _question(msg: bytes, at: int) -> tuple[str, int, int, int] | None:
    """(name, qtype, qclass, end) of the question at ``at``, or None if it is malformed."""
    labels: list[str] = []
    total = 0
    while True:
        if at >= len(msg):
            return None
        n = msg[at]
        at += 1
        if n == 0:
            break
        if n & 0xC0 or at + n > len(msg):  # compression in a question, or a label cut short
            return None
        total += n + 1
        if total > 255:
            return None
        try:
            labels.append(msg[at : at + n].decode("ascii").lower())
        except UnicodeDecodeError:
            return None
        at += n
    if at + 4 > len(msg) or not labels:
        return None
    qtype, qclass = struct.unpack_from("!HH", msg, at)
    return ".".join(labels), qtype, qclass, at + 4
