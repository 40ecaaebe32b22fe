"""XDP programs built by kbypass: which frames go to AF_XDP sockets, which stay with the kernel.

A filter is a list of rules ORed together; a frame matching any rule is redirected to the
AF_XDP socket of its RX queue, everything else (ARP, SSH, ...) goes to the kernel (XDP_PASS).
Short or malformed frames always go to the kernel.

Filter grammar (EBNF; keywords are case-insensitive)::

    filter    = rule , { ( "or" | "," | ";" ) , rule } ;
    rule      = term , { [ "and" ] , term } ;
    term      = "all"
              | "ip" | "ip4" | "ip6"
              | "udp" | "tcp" | "sctp" | "icmp" | "icmp6"
              | ( "proto" | "ip" "proto" ) , number
              | "ether" , "proto" , ( number | "ip" | "ip6" | "arp" )
              | "vlan" , [ number ]
              | dir , [ "host" | "net" ] , prefix
              | [ dir ] , "port" , portrange ;
    dir       = "src" | "dst" ;
    prefix    = ipv4 [ "/" 0..32 ] | ipv6 [ "/" 0..128 ] ;
    portrange = port , [ "-" , port ] ;
    number    = decimal | "0x" hex ;

Examples: ``udp dst port 9000-9010``, ``ip6 tcp src port 22``,
``ip src 198.18.0.0/15 and udp``, ``ether proto 0x88b5``, ``udp port 53 or tcp dst port 80``.

The program reads a frame exactly as :func:`kbypass.packet.parse` does, so a rule matches when
the parsed fields say it should: up to two VLAN tags (QinQ) are stepped over and ``vlan N`` is
the outer tag (a third tag makes the frame non-IP); an IP header counts when its fixed part is
in the frame and valid; up to 8 IPv6 extension headers (hop-by-hop, routing, fragment,
destination options) are walked, each only if it lies inside the payload length and the frame,
and where the walk stops that header's number is the protocol; ports exist only in a first
fragment whose whole UDP (8 bytes), SCTP (12) or TCP (data offset x 4) header lies inside the
IP datagram (IPv4 total length, IPv6 payload length) and the frame, so Ethernet padding is
never read as ports.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Union

from kbypass import _core
from kbypass._core import XdpAttachment

_PROTO_NAMES = {"udp": 17, "tcp": 6, "sctp": 132, "icmp": 1, "icmp6": 58, "icmpv6": 58}
_PROTO_BY_NUMBER = {17: "udp", 6: "tcp", 132: "sctp", 1: "icmp", 58: "icmp6"}

PortSpec = Union[int, tuple[int, int], None]


class Verdict(enum.IntEnum):
    """What an XDP program decided for a frame."""

    ABORTED = 0
    DROP = 1
    PASS = 2
    TX = 3
    REDIRECT = 4


def _ports(name: str, value: PortSpec) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError(f"{name} must be a port number or a (low, high) tuple, not bool")
    if isinstance(value, int):
        lo = hi = value
    elif isinstance(value, tuple) and len(value) == 2 and all(isinstance(v, int) for v in value):
        lo, hi = value
    else:
        raise TypeError(f"{name} must be a port number or a (low, high) tuple, got {value!r}")
    for p in (lo, hi):
        if not 0 <= p <= 65535:
            raise ValueError(f"{name}={value!r}: ports are 0..65535")
    return (lo, hi)


@dataclass(frozen=True)
class Rule:
    """One match rule; every field that is set must match.

    Example::

        >>> str(Rule(proto="udp", dport=(9000, 9010)))
        'udp dst port 9000-9010'
        >>> str(Rule(ip=4, src="198.18.0.0/15", proto="tcp", sport=22))
        'ip tcp src 198.18.0.0/15 src port 22'

    ``proto`` is a name (udp, tcp, sctp, icmp, icmp6) or an IP protocol number; ``ip`` is 4 or
    6 (None: both); ``src``/``dst`` are addresses or prefixes; ports are a number or an
    inclusive ``(low, high)`` range; ``ethertype`` matches non-IP frames; ``vlan`` is a VLAN id,
    True for "any tagged frame", or None for "tagged or not".
    """

    proto: str | int | None = None
    ip: int | None = None
    src: str | None = None
    dst: str | None = None
    sport: int | tuple[int, int] | None = None
    dport: int | tuple[int, int] | None = None
    ethertype: int | None = None
    vlan: int | bool | None = None
    _text: str = field(init=False, repr=False, compare=False, default="")

    def __post_init__(self) -> None:
        proto: int | None
        ip = self.ip
        if self.proto is None:
            proto = None
        elif isinstance(self.proto, str):
            key = self.proto.lower()
            if key not in _PROTO_NAMES:
                names = ", ".join(sorted(_PROTO_NAMES))
                raise ValueError(f"proto={self.proto!r} is not one of {names} or a number")
            proto = _PROTO_NAMES[key]
            if key == "icmp" and ip is None:
                ip = 4
            if key in ("icmp6", "icmpv6") and ip is None:
                ip = 6
        elif isinstance(self.proto, int) and not isinstance(self.proto, bool):
            if not 0 <= self.proto <= 255:
                raise ValueError(f"proto={self.proto} must be 0..255")
            proto = self.proto
        else:
            raise TypeError(f"proto must be a name or a number, got {self.proto!r}")
        if ip is not None and ip not in (4, 6):
            raise ValueError(f"ip={ip!r} must be 4, 6 or None")
        for name in ("src", "dst"):
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                raise TypeError(f"{name} must be an address string like '198.18.0.0/15'")
        vlan: int | None
        if self.vlan is None or self.vlan is False:
            vlan = None
        elif self.vlan is True:
            vlan = -1
        elif isinstance(self.vlan, int) and 0 <= self.vlan <= 4095:
            vlan = self.vlan
        else:
            raise ValueError(f"vlan={self.vlan!r} must be a VLAN id 0..4095, True or None")
        et = self.ethertype
        if et is not None and (
            isinstance(et, bool) or not isinstance(et, int) or not 0 <= et <= 0xFFFF
        ):
            raise ValueError(f"ethertype={et!r} must be 0..0xffff")
        text = _core.rule_text(
            ip=ip,
            proto=proto,
            src=self.src,
            dst=self.dst,
            sport=_ports("sport", self.sport),
            dport=_ports("dport", self.dport),
            ethertype=et,
            vlan=vlan,
        )
        object.__setattr__(self, "ip", ip)  # icmp/icmp6 imply the IP version
        object.__setattr__(self, "_text", text)

    def __str__(self) -> str:
        """Return the rule in filter syntax."""
        return self._text

    def __kbypass_filter__(self) -> str:
        """Return the rule's filter text: how ``filter=`` arguments (parsed in Rust) read a Rule."""
        return self._text

    @classmethod
    def _from_core(cls, d: dict[str, Any]) -> Rule:
        proto = d["proto"]
        vlan = d["vlan"]
        return cls(
            proto=_PROTO_BY_NUMBER.get(proto, proto) if proto is not None else None,
            ip=d["ip"],
            src=d["src"],
            dst=d["dst"],
            sport=_collapse(d["sport"]),
            dport=_collapse(d["dport"]),
            ethertype=d["ethertype"],
            vlan=True if vlan == -1 else vlan,
        )


def _collapse(r: tuple[int, int] | None) -> int | tuple[int, int] | None:
    if r is None:
        return None
    return r[0] if r[0] == r[1] else (r[0], r[1])


def parse_filter(text: str) -> list[Rule]:
    """Parse filter text (see the module docstring) into rules.

    Example::

        >>> [str(r) for r in parse_filter("udp port 53 or tcp dst port 80")]
        ['udp src port 53', 'udp dst port 53', 'tcp dst port 80']

    Raises ``ValueError`` pointing at the offending token.
    """
    if not isinstance(text, str):
        raise TypeError(f"filter must be a str, got {type(text).__name__}")
    return [Rule._from_core(d) for d in _core.parse_filter(text)]


FilterSpec = Union[str, Rule, Sequence[Union[str, Rule]], None]


class XdpProgram(_core.XdpProgram):
    """kbypass's XDP program: redirect matching frames to AF_XDP sockets, pass the rest.

    Example::

        with XdpProgram(filter="udp dst port 9000-9010") as prog:
            assert prog.test_run(frame) is Verdict.REDIRECT
            with prog.attach("veth0", mode="auto") as att:
                print(att.mode)   # "native" or "generic"

    ``filter`` is filter text, a :class:`Rule`, or a list of them (ORed); None redirects every
    frame. ``frags=True`` loads the multi-buffer capable variant (for sockets bound with
    XDP_USE_SG and MTUs above a page). ``queues`` is the number of XSKMAP slots. Needs
    CAP_BPF and CAP_NET_ADMIN (root): otherwise ``PermissionError``.

    The program itself is the extension's (``id``, ``name``, ``tag``, ``filter``, ``frags``,
    ``queues``, ``insn_count``, ``map_fd``, ``set_socket``, ``clear_socket``, ``attach``,
    ``close``); this class adds the rules as :class:`Rule` objects and test runs that answer
    with a :class:`Verdict`. ``attach`` does not replace a program that is not kbypass's, or
    one another kbypass process holds, unless ``force=True`` (``FileExistsError`` /
    ``OSError(EBUSY)`` naming it).
    """

    @property
    def rules(self) -> list[Rule]:
        """The rules, parsed back from the canonical filter."""
        return [] if self.filter is None else parse_filter(self.filter)

    def test_run(self, frame: bytes, repeat: int = 1) -> Verdict:
        """Run the program on ``frame`` as if a socket were bound on queue 0.

        ``Verdict.REDIRECT`` means the frame would reach the socket, ``Verdict.PASS`` the
        kernel. Attached interfaces are not affected (a private copy of the program runs).
        """
        verdict, _ns = self.run(_frame(frame), _repeat(repeat))
        return Verdict(verdict)

    def run_time_ns(self, frame: bytes, repeat: int = 100_000) -> float:
        """Return the kernel-measured average time of one run of the program on ``frame`` (ns)."""
        _verdict, ns = self.run(_frame(frame), _repeat(repeat))
        return float(ns)


def _frame(frame: object) -> bytes:
    if not isinstance(frame, (bytes, bytearray, memoryview)):
        raise TypeError(f"frame must be bytes, got {type(frame).__name__}")
    return bytes(frame)


def _repeat(repeat: object) -> int:
    if isinstance(repeat, bool) or not isinstance(repeat, int) or not 1 <= repeat < 2**32:
        raise ValueError(f"repeat={repeat!r} must be 1..2**32-1")
    return repeat


def probe_xdp() -> dict[str, Any]:
    """Report what this kernel supports: AF_XDP sockets, program load, frags, links, live frames.

    Each entry is ``{"ok": bool, "detail": str}`` (the detail carries the fix when not ok),
    plus ``kernel`` and ``redirect_form``.
    """
    return _core.probe_xdp()


def xdp_query(ifname: str) -> list[dict[str, Any]]:
    """List the XDP programs attached to ``ifname`` (prog_id, mode, name, tag, link_id, ours)."""
    return _core.xdp_query(ifname)


__all__ = [
    "Rule",
    "Verdict",
    "XdpAttachment",
    "XdpProgram",
    "parse_filter",
    "probe_xdp",
    "xdp_query",
]
