"""Traffic on a :class:`~kbypass.testing.VethPair`: a fast generator, a counting sink, baselines.

* :class:`TrafficGenerator` — the kernel's XDP "live frames" test run sending a UDP frame out of
  one end of the pair (tens of millions of frames per second on a quiet machine; far more than
  AF_XDP copy-mode TX or ``sendmmsg`` reach, so it can saturate any receiver you test).
* :class:`DropCounter` — an XDP program on the other end that counts and drops every frame: the
  ceiling of the receive path, and an exact count of what arrived.
* :func:`udp_send`, :func:`udp_recv`, :func:`af_packet_recv` — the kernel's own socket paths
  (``sendmmsg``, ``recvmmsg``, ``AF_PACKET`` ``TPACKET_V3``), for baselines.

Example::

    from kbypass.testing import DropCounter, TrafficGenerator, VethPair

    with VethPair() as pair, DropCounter(pair, side="b") as sink:
        gen = TrafficGenerator(pair, side="a", size=60, flows=16)
        sent = gen.run(count=1_000_000)
        assert sink.wait_for(sent.packets).packets == sent.packets
        print(f"{sent.pps / 1e6:.1f} Mpps")

Sizes are Ethernet frame sizes without the FCS: 60 is a minimum-size (64-byte wire) frame, 1514
the largest that fits an MTU of 1500. Every blocking call releases the GIL.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from kbypass import _core
from kbypass.testing.veth import VethEnd, VethPair

__all__ = [
    "Counts",
    "DropCounter",
    "TrafficGenerator",
    "TrafficResult",
    "af_packet_recv",
    "udp_recv",
    "udp_send",
]

_HEADERS = 14 + 20 + 8  # Ethernet + IPv4 + UDP


@dataclass(frozen=True)
class TrafficResult:
    """Packets and bytes moved over ``elapsed`` seconds, and the rate.

    ``bytes`` counts frame bytes for the generator and raw sockets, UDP payload bytes for UDP
    sockets. ``calls`` and ``interrupted`` are set by the generator only.
    """

    packets: int
    bytes: int
    elapsed: float
    pps: float
    calls: int = 0
    interrupted: bool = False

    @property
    def mpps(self) -> float:
        """Millions of packets per second."""
        return self.pps / 1e6

    @classmethod
    def _from(cls, d: dict[str, Any]) -> TrafficResult:
        return cls(
            packets=int(d["packets"]),
            bytes=int(d["bytes"]),
            elapsed=float(d["elapsed"]),
            pps=float(d["pps"]),
            calls=int(d.get("calls", 0)),
            interrupted=bool(d.get("interrupted", False)),
        )


@dataclass(frozen=True)
class Counts:
    """What a :class:`DropCounter` has counted."""

    packets: int
    bytes: int


def _ends(pair: VethPair, side: str) -> tuple[VethEnd, VethEnd]:
    if side == "a":
        return pair.a, pair.b
    if side == "b":
        return pair.b, pair.a
    raise ValueError(f"side must be 'a' or 'b', not {side!r}")


def _check_pair(pair: object) -> VethPair:
    if not isinstance(pair, VethPair):
        raise TypeError(f"pair must be a kbypass.testing.VethPair, not {type(pair).__name__}")
    if pair.closed:
        raise RuntimeError("the VethPair is closed: create a new one")
    return pair


class TrafficGenerator:
    """UDP traffic from one end of a :class:`VethPair` to the other, via XDP live frames.

    Args:
        pair: the veth pair.
        side: the end that sends (``"a"`` or ``"b"``); frames go to the other end's MAC/IP.
        size: frame size without the FCS, 60..=MTU+14 (60 is a 64-byte wire frame); the
            default is 60, or with ``payload`` the length the payload makes.
        flows: distinct UDP source ports ``src_port, src_port+1, ...``, used in turn; with
            more than one flow the UDP checksum is 0 (valid for IPv4) so only the port changes.
        src_port: first UDP source port.
        dst_port: UDP destination port.
        udp_checksum: write a UDP checksum (only with ``flows=1``).
        batch_size: frames per kernel batch, 1..=256 (0: the kernel default, 64).
        cpu: pin the sending thread to this CPU during runs.
        src_ip: the frames' IPv4 source address (default: the sending end's); frames are
            written, not routed, so another address (e.g. a second "host" in 198.18.0.0/15)
            needs no configuration.
        payload: the frames' UDP payload instead of the default fill (a sequence-number slot
            and a pattern): the frame is 42 bytes of headers plus the payload (zero-padded to
            60), IP/UDP lengths and checksums to match. A ``size`` given with it must be that
            length; a payload whose frame exceeds 9014 bytes is refused (ValueError), and one
            whose frame exceeds the sending end's MTU + 14 is refused when a run starts.

    Example::

        gen = TrafficGenerator(pair, size=1514)
        r = gen.run(duration=1.0)                # as fast as possible for a second
        r = gen.run(count=10_000, rate=100_000)  # 10k frames at 100 kpps
        gen.start(rate=50_000)                   # background traffic ...
        ...
        print(gen.stop().packets)
    """

    def __init__(
        self,
        pair: VethPair,
        side: str = "a",
        *,
        size: int | None = None,
        flows: int = 1,
        src_port: int = 10000,
        dst_port: int = 9000,
        udp_checksum: bool = True,
        batch_size: int = 0,
        cpu: int | None = None,
        src_ip: str | None = None,
        payload: bytes | None = None,
    ) -> None:
        self.pair = _check_pair(pair)
        self.end, self.peer = _ends(pair, side)
        self.cpu = cpu
        self._gen = _core.LiveGenerator(
            size=size,
            flows=flows,
            src_ip=self.end.ip if src_ip is None else src_ip,
            dst_ip=self.peer.ip,
            src_port=src_port,
            dst_port=dst_port,
            src_mac=self.end.mac,
            dst_mac=self.peer.mac,
            udp_checksum=udp_checksum,
            batch_size=batch_size,
            payload=None if payload is None else bytes(payload),
        )

    @property
    def frame(self) -> bytes:
        """The frame sent (the first flow's source port)."""
        return bytes(self._gen.frame)

    @property
    def size(self) -> int:
        """Frame size in bytes without the FCS."""
        return self._gen.size

    @property
    def payload(self) -> bytes:
        """The frame's UDP payload (what a UDP socket at the other end receives)."""
        f = self.frame
        return f[_HEADERS : 14 + int.from_bytes(f[16:18], "big")]

    @property
    def flows(self) -> int:
        """Distinct UDP source ports."""
        return self._gen.flows

    @property
    def keeper_note(self) -> str | None:
        """Why calls pay ~20 ms of RCU waits each (None normally; see docs/performance.md)."""
        return self._gen.keeper_note

    @property
    def running(self) -> bool:
        """Whether a background run started by :meth:`start` is still sending."""
        return self._gen.running

    def run(
        self,
        count: int | None = None,
        duration: float | None = None,
        rate: float | None = None,
    ) -> TrafficResult:
        """Send until ``count`` frames or ``duration`` seconds, at most ``rate`` frames/s."""
        d = self._gen.run(
            self.end.ifname,
            self.end.netns,
            count=count,
            duration=duration,
            rate=rate,
            cpu=self.cpu,
        )
        return TrafficResult._from(d)

    def start(
        self,
        count: int | None = None,
        duration: float | None = None,
        rate: float | None = None,
    ) -> None:
        """Send in a background thread until :meth:`stop` (or a count/duration limit)."""
        self._gen.start(
            self.end.ifname,
            self.end.netns,
            count=count,
            duration=duration,
            rate=rate,
            cpu=self.cpu,
        )

    def stop(self) -> TrafficResult:
        """Stop the background run (within about 250 ms) and return what it sent."""
        return TrafficResult._from(self._gen.stop())

    def wait(self, timeout: float | None = None) -> TrafficResult:
        """Wait for a background run with a count/duration limit to end; return its result."""
        return TrafficResult._from(self._gen.wait(timeout))

    def close(self) -> None:
        """Stop a background run if one is going (idempotent)."""
        if self._gen.running:
            self._gen.stop()

    def __enter__(self) -> TrafficGenerator:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"TrafficGenerator({self.end.netns}/{self.end.ifname} -> {self.peer.ip}, "
            f"size={self.size}, flows={self.flows})"
        )


class DropCounter:
    """Count and drop every frame arriving at one end of a :class:`VethPair` (XDP_DROP).

    Args:
        pair: the veth pair.
        side: the receiving end.
        mode: ``"native"`` (the default; veth has native XDP), ``"generic"`` or ``"auto"``.
        force: replace another program on the interface.

    The program is detached by :meth:`close`, on ``with`` exit, or when the object is
    collected. Everything arriving is counted, including the kernel's own frames (IPv6
    neighbour discovery, for instance): for exact counts, :meth:`reset` once the link is quiet.

    Example::

        with DropCounter(pair, side="b") as sink:
            TrafficGenerator(pair).run(count=1000)
            assert sink.wait_for(1000) == Counts(1000, 60_000)
    """

    def __init__(
        self, pair: VethPair, side: str = "b", *, mode: str = "native", force: bool = False
    ) -> None:
        self.pair = _check_pair(pair)
        self.end, _ = _ends(pair, side)
        self._sink = _core.DropCounter(self.end.ifname, self.end.netns, mode, force)

    @property
    def mode(self) -> str:
        """The attach mode the kernel reports."""
        return self._sink.mode

    @property
    def attached(self) -> bool:
        """Whether the program is still attached."""
        return self._sink.attached

    def read(self) -> Counts:
        """Frames and bytes dropped so far."""
        d = self._sink.read()
        return Counts(int(d["packets"]), int(d["bytes"]))

    def reset(self) -> None:
        """Set the counters to zero."""
        self._sink.reset()

    def measure(self, duration: float) -> TrafficResult:
        """Count what arrives during the next ``duration`` seconds (GIL released)."""
        return TrafficResult._from(self._sink.measure(duration))

    def settle(self, quiet: float = 0.05) -> Counts:
        """Read until the count stops changing for ``quiet`` seconds, and return it."""
        last = self.read()
        while True:
            time.sleep(quiet)
            now = self.read()
            if now == last:
                return now
            last = now

    def wait_for(self, packets: int, timeout: float = 5.0) -> Counts:
        """Wait until at least ``packets`` frames were counted and the count settled.

        Raises:
            TimeoutError: fewer arrived within ``timeout`` seconds (the message says how many).
        """
        deadline = time.monotonic() + timeout
        while True:
            c = self.read()
            if c.packets >= packets:
                return self.settle()
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"{c.packets} of {packets} frames arrived at {self.end.ifname} within "
                    f"{timeout} s: is the sender on the other end of the pair, and GRO on?"
                )
            time.sleep(0.01)

    def close(self) -> None:
        """Detach the program (idempotent; the counters stay readable)."""
        self._sink.close()

    def __enter__(self) -> DropCounter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"DropCounter({self.end.netns}/{self.end.ifname}, mode={self.mode!r})"


def udp_send(
    pair: VethPair,
    side: str = "a",
    *,
    count: int,
    size: int = 60,
    dst_port: int = 9000,
    batch: int = 64,
    cpu: int | None = None,
) -> TrafficResult:
    """Send ``count`` UDP datagrams to the other end with ``sendmmsg`` (kernel TX baseline).

    ``size`` is the frame size the datagram makes on the wire (payload = size - 42 bytes).
    ``bytes`` in the result counts payload bytes.
    """
    _check_pair(pair)
    end, peer = _ends(pair, side)
    if size < _HEADERS:
        raise ValueError(f"size {size} is smaller than the {_HEADERS} bytes of headers")
    d = _core.udp_send(
        end.ip,
        peer.ip,
        dst_port,
        bytes(size - _HEADERS),
        count,
        batch=batch,
        netns=end.netns,
        cpu=cpu,
    )
    return TrafficResult._from(d)


def udp_recv(
    pair: VethPair,
    side: str = "b",
    *,
    port: int = 9000,
    count: int | None = None,
    duration: float | None = None,
    batch: int = 64,
    idle: float = 0.3,
    cpu: int | None = None,
) -> TrafficResult:
    """Receive UDP on ``side``'s address with ``recvmmsg`` (kernel RX baseline).

    Stops after ``count`` datagrams, ``duration`` seconds, or ``idle`` seconds without traffic
    once traffic started; ``elapsed`` runs from the first to the last datagram.
    """
    _check_pair(pair)
    end, _ = _ends(pair, side)
    d = _core.udp_recv(
        end.ip,
        port,
        count=count,
        duration=duration,
        batch=batch,
        idle=idle,
        netns=end.netns,
        cpu=cpu,
    )
    return TrafficResult._from(d)


def af_packet_recv(
    pair: VethPair,
    side: str = "b",
    *,
    count: int | None = None,
    duration: float | None = None,
    idle: float = 0.3,
    cpu: int | None = None,
) -> TrafficResult:
    """Count frames arriving at ``side`` with an ``AF_PACKET`` ``TPACKET_V3`` ring.

    Same stop rules as :func:`udp_recv`; ``bytes`` is not counted (0).
    """
    _check_pair(pair)
    end, _ = _ends(pair, side)
    d = _core.af_packet_recv(
        end.ifname, count=count, duration=duration, idle=idle, netns=end.netns, cpu=cpu
    )
    return TrafficResult._from(d)
