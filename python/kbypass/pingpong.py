"""UDP request/response latency on a veth bench: sockperf against echo servers, side by side.

``sockperf`` (Debian's package) runs its client in namespace ``a`` of a
:class:`~kbypass.testing.VethPair`, pinned to the first allowed CPU, against one server at a time
in namespace ``b``, pinned to the last one:

* a :class:`kbypass.Pipeline` running :func:`sockperf_echo` (a Python batch handler), once per
  latency mode (``"adaptive"``, ``"busy"``, ``"sleep"``);
* the kernel's UDP server: ``sockperf server`` on a UDP socket, the reference;
* optionally the C libxdp reflector ``xsk_ref udpecho`` (``benches/c/xsk_ref.c``);
* the in-kernel XDP echo (:func:`xdp_echo_server`, ``kbypass._core.UdpEcho``): an XDP program
  that answers the requests itself with ``XDP_TX``. No server can answer faster on this bench
  (no socket, no user space, no copy), so it is the floor the others are measured against: what
  is left between it and the kernel's UDP server is the cost of the socket path, and between it
  and a Pipeline the cost of AF_XDP and Python.

Three measurements per server: ``sockperf ping-pong`` (one message in flight: round-trip time
percentiles, and the messages per second that makes), ``sockperf under-load --mps max
--reply-every 1`` (the client sends as fast as it can and every message asks for an answer: the
answers per second that come back) and :func:`capacity` (the XDP live-frames generator offers
sockperf requests faster than any server here answers them, and an ``XDP_DROP`` counter on the
client's end counts the answers: the server's answers per second at an offered load that outruns
it). The capacity measurement exists because sockperf's client is the limit of its under-load
figure on a small machine: even the in-kernel XDP echo, with no user space at all, gets barely
more answers from it than the kernel's UDP server. :func:`run_latency` measures the kernel and
every subject once per round and gives each subject's ratios to the kernel of the same round.

Example::

    from kbypass.pingpong import run_latency
    for r in run_latency(rounds=3):
        print(r.server, r.rtt_p50_us, r.ratio("rtt_p50_us"))
"""

from __future__ import annotations

import contextlib
import math
import re
import shutil
import signal
import statistics
import struct
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from kbypass.pipeline import TX, Latency, Pipeline
from kbypass.testing import process

if TYPE_CHECKING:
    from kbypass._core import Batch
    from kbypass.testing import VethPair

__all__ = [
    "C_REF",
    "KERNEL",
    "LATENCY_MODES",
    "METRICS",
    "SOCKPERF_PORT",
    "Capacity",
    "Measurement",
    "Result",
    "XDP_ECHO",
    "SockperfMissingError",
    "capacity",
    "kernel_server",
    "measure",
    "parse_sockperf",
    "pipeline_server",
    "request",
    "run_latency",
    "sockperf_echo",
    "summarize",
    "xdp_echo_server",
    "xsk_ref_server",
]

SOCKPERF_PORT = 11111
LATENCY_MODES: tuple[Latency, ...] = ("adaptive", "busy", "sleep")
KERNEL = "kernel UDP (sockperf server)"
C_REF = "C libxdp reflector (xsk_ref udpecho)"
XDP_ECHO = "in-kernel XDP echo (XDP_TX, the floor)"

# sockperf's message header, the start of the UDP payload: a u64 sequence number, u16 flags and
# a u32 length, big-endian. Flag bits: 1 the sender is a client, 2 it asks for an answer, 4 a
# warm-up message. `sockperf server` answers a client's request that asks for one and is not a
# warm-up, with the client bit cleared; so does this echo.
_FLAGS = 9  # the flags' low byte
_REQUEST = 0x03  # client | answer wanted
_ANSWER = 0x02  # the same message, from the server
_ANSWER_BYTE = bytes([_ANSWER])
_MSG_HEADER = 14
_IPV4_UDP = 14 + 20 + 8  # Ethernet, IPv4 without options, UDP
_TX = int(TX)  # a plain int: the cheapest verdict to return


def sockperf_echo(batch: Batch) -> int | None:
    """Answer sockperf's UDP requests as ``sockperf server`` does (a Pipeline batch handler).

    A request that asks for an answer and is not a warm-up message goes back to its sender
    (``TX``) with the client flag cleared, MACs, IPs and ports swapped and the checksums fixed;
    every other frame keeps the default verdict (``DROP``). A batch of one (the ping-pong case)
    is read with :meth:`Batch.bytes` (its headers only, no NumPy view), answered with two Rust
    calls (:meth:`Batch.set_field`, :meth:`Batch.reflect`) and given its verdict by the return
    value; larger batches are answered with masks.
    """
    if len(batch) == 1:
        b = batch.bytes(0, 0, _IPV4_UDP + _MSG_HEADER)
        if (
            len(b) == _IPV4_UDP + _MSG_HEADER
            and b[12] == 0x08  # IPv4
            and b[13] == 0x00
            and b[14] == 0x45  # no options
            and b[23] == 17  # UDP
            and b[_IPV4_UDP + _FLAGS] == _REQUEST
        ):
            batch.set_field(_IPV4_UDP + _FLAGS, _ANSWER_BYTE)
            batch.reflect()
            return _TX  # the verdict of the batch's one frame
        return None
    h = batch.headers
    at = batch.addrs + h["payload_off"] + _FLAGS
    size = batch.frame_size
    flags = batch.umem[at // size, at % size]
    answer = (flags == _REQUEST) & (h["payload_len"] >= _MSG_HEADER) & (h["proto"] == 17)
    if not answer.any():
        return None
    batch.set_field(_FLAGS, _ANSWER_BYTE, mask=answer, base="payload")
    batch.reflect(answer)
    batch.verdicts[answer] = _TX
    return None


class SockperfMissingError(RuntimeError):
    """``sockperf`` is not installed."""


def _sockperf() -> str:
    exe = shutil.which("sockperf")
    if exe is None:
        raise SockperfMissingError(
            "sockperf is not installed: apt-get install sockperf (or bash .ci/install-system-deps)"
        )
    return exe


_PERCENTILE = re.compile(r"percentile\s+([\d.]+)\s*=\s*([\d.]+)")
_VALID = re.compile(
    r"\[Valid Duration\] RunTime=([\d.]+) sec; SentMessages=(\d+); ReceivedMessages=(\d+)"
)
_AVG = re.compile(r"avg-(?:rtt|lat)=([\d.]+)")


def parse_sockperf(text: str) -> dict[str, float]:
    """Parse a sockperf client's report: the valid run's time and messages, and its latency.

    Returns ``seconds``, ``sent``, ``received``, ``avg_us`` and ``p<percentile>_us`` (``p50_us``,
    ``p99_us``, ``p99.9_us``, ...). Raises RuntimeError naming what is missing when the report
    has no measured messages (the server did not answer).
    """
    m = _VALID.search(text)
    if m is None or int(m.group(3)) == 0:
        raise RuntimeError(
            "sockperf measured no answers (is the server up, and does it answer sockperf's "
            f"requests?); its report ends: {text.strip()[-400:]!r}"
        )
    out = {"seconds": float(m.group(1)), "sent": float(m.group(2)), "received": float(m.group(3))}
    a = _AVG.search(text)
    if a is not None:
        out["avg_us"] = float(a.group(1))
    for pct, value in _PERCENTILE.findall(text):
        out[f"p{float(pct):g}_us"] = float(value)
    return out


@dataclass
class Measurement:
    """One server, one round: ping-pong latency and the answer rates under load.

    ``load_*``: sockperf's under-load client; ``capacity_*``: :func:`capacity` (answers per
    second at an offered load that outruns the server, and the rate offered). NaN when not
    measured.
    """

    server: str
    round: int
    rtt_p50_us: float
    rtt_p99_us: float
    rtt_p999_us: float
    rtt_avg_us: float
    pingpong_msgs_per_s: float
    load_msgs_per_s: float
    load_sent_per_s: float
    capacity_aps: float = math.nan
    capacity_offered_per_s: float = math.nan
    extra: dict[str, Any] = field(default_factory=dict)


METRICS = (
    "rtt_p50_us",
    "rtt_p99_us",
    "rtt_p999_us",
    "pingpong_msgs_per_s",
    "load_msgs_per_s",
    "capacity_aps",
)


def request(size: int = 64, seq: int = 0) -> bytes:
    """Return a sockperf client's request of ``size`` bytes (``-m size``), as a UDP payload.

    The 14-byte message header (sequence number ``seq``, flags 0x0003 "client, answer wanted",
    length ``size``; big-endian) and zero padding; ``sockperf server`` answers it only when the
    length field matches the datagram, as here.
    """
    if not _MSG_HEADER <= size <= 65_507:
        raise ValueError(f"size={size}: a sockperf message has {_MSG_HEADER}..=65507 bytes")
    return struct.pack("!QHI", seq, _REQUEST, size).ljust(size, b"\0")


@dataclass(frozen=True)
class Capacity:
    """What :func:`capacity` counted: requests offered and answers back, over ``seconds``.

    ``late`` answers arrived after the generator stopped (requests still queued at the server
    then): reported, not counted in ``answers``.
    """

    offered: int
    answers: int
    seconds: float
    late: int = 0

    @property
    def offered_per_s(self) -> float:
        """Requests offered per second."""
        return self.offered / self.seconds if self.seconds > 0 else 0.0

    @property
    def answers_per_s(self) -> float:
        """Answers counted per second: the server's capacity at this offered load."""
        return self.answers / self.seconds if self.seconds > 0 else 0.0


def capacity(
    pair: VethPair,
    *,
    seconds: float = 1.0,
    cpu: int | None = None,
    size: int = 64,
    rate: float | None = None,
) -> Capacity:
    """Offer sockperf requests to ``pair.b`` faster than it answers; count the answers.

    The XDP live-frames generator (:class:`kbypass.testing.TrafficGenerator`, pinned to ``cpu``)
    sends :func:`request` frames from ``pair.a`` to :data:`SOCKPERF_PORT` for ``seconds``, as
    fast as it can or at ``rate`` frames per second, while a :class:`kbypass.testing.DropCounter`
    on ``pair.a`` counts (and drops) every frame that comes back. Answers counted while the
    generator ran, over the run's time, are the server's answers per second at that offered
    load. Whatever answers at ``pair.b`` now is measured; a server that answers nothing gives 0.

    The counter drops ARP too, and the generator needs none (it writes both MACs), but the
    kernel's UDP server answers through its neighbour table: the client's MAC is (re)set as a
    permanent neighbour in namespace ``b`` first (``ip neigh replace ... nud permanent``, what
    :class:`~kbypass.testing.VethPair` sets up anyway). Every frame arriving at ``pair.a`` is
    counted, so what else is sent there (an ICMP error from a port nobody listens on, say) would
    count too; the servers here send nothing else.
    """
    from kbypass.testing import DropCounter, TrafficGenerator

    if not (math.isfinite(seconds) and seconds > 0):
        raise ValueError(f"seconds={seconds} must be a positive number")
    pair.run(
        "b", "ip", "neigh", "replace", pair.a.ip, "lladdr", pair.a.mac,
        "dev", pair.b.ifname, "nud", "permanent",
    )  # fmt: skip
    gen = TrafficGenerator(pair, "a", payload=request(size), dst_port=SOCKPERF_PORT, cpu=cpu)
    with DropCounter(pair, side="a") as sink:
        sink.reset()
        sent = gen.run(duration=seconds, rate=rate)
        answers = sink.read().packets
        late = sink.settle().packets - answers
    return Capacity(offered=sent.packets, answers=answers, seconds=sent.elapsed, late=late)


def _client(pair: VethPair, mode: str, seconds: int, cpu: int, size: int) -> dict[str, float]:
    args = [
        "taskset", "-c", str(cpu), _sockperf(), mode, "-i", pair.b.ip,
        "-p", str(SOCKPERF_PORT), "-t", str(seconds), "-m", str(size), "--full-rtt",
    ]  # fmt: skip
    if mode == "under-load":
        args += ["--mps", "max", "--reply-every", "1"]
    r = pair.run("a", *args, check=False, timeout=seconds + 30)
    return parse_sockperf(r.stdout + r.stderr)


def measure(
    pair: VethPair,
    server: str,
    *,
    round: int = 0,
    seconds: int = 1,
    cpu: int = 0,
    size: int = 64,
    load: bool = True,
    offered: float | None = None,
) -> Measurement:
    """Run sockperf's ping-pong client against ``pair.b``, and with ``load`` more under load.

    With ``load``: sockperf's under-load client and :func:`capacity` (at ``offered``
    requests/s, or as fast as the generator goes). Whatever answers there now is measured;
    ``server`` names it in the result.
    """
    pp = _client(pair, "ping-pong", seconds, cpu, size)
    ul = _client(pair, "under-load", seconds, cpu, size) if load else None
    cap = capacity(pair, seconds=seconds, cpu=cpu, size=size, rate=offered) if load else None
    return Measurement(
        server=server,
        round=round,
        rtt_p50_us=pp["p50_us"],
        rtt_p99_us=pp["p99_us"],
        rtt_p999_us=pp["p99.9_us"],
        rtt_avg_us=pp.get("avg_us", math.nan),
        pingpong_msgs_per_s=pp["received"] / pp["seconds"],
        load_msgs_per_s=ul["received"] / ul["seconds"] if ul else math.nan,
        load_sent_per_s=ul["sent"] / ul["seconds"] if ul else math.nan,
        capacity_aps=cap.answers_per_s if cap else math.nan,
        capacity_offered_per_s=cap.offered_per_s if cap else math.nan,
        extra={"capacity": asdict(cap)} if cap else {},
    )


@contextlib.contextmanager
def pipeline_server(
    pair: VethPair, latency: Latency, cpu: int, **options: Any
) -> Iterator[Pipeline]:
    """Start a Pipeline answering sockperf on ``pair.b`` (copy mode, one worker on ``cpu``)."""
    with pair.enter("b"):
        p = Pipeline(
            pair.b.ifname,
            sockperf_echo,
            filter=f"udp dst port {SOCKPERF_PORT}",
            mode="copy",
            cpus=[cpu],
            progress=False,
            latency=latency,
            **options,
        )
    with p:
        p.start()
        yield p


@contextlib.contextmanager
def kernel_server(pair: VethPair, cpu: int) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``sockperf server`` on ``pair.b``'s address, pinned to ``cpu``."""
    port = str(SOCKPERF_PORT)
    cmd = ("taskset", "-c", str(cpu), _sockperf(), "server", "-i", pair.b.ip, "-p", port)
    with process.server(
        cmd, netns=pair.b, port=SOCKPERF_PORT, proto="udp", stop=signal.SIGINT
    ) as p:
        yield p


@contextlib.contextmanager
def xsk_ref_server(pair: VethPair, exe: Path, cpu: int) -> Iterator[subprocess.Popen[bytes]]:
    """Run the C reflector ``exe udpecho`` (``benches/c/xsk_ref.c``) on ``pair.b``, on ``cpu``."""
    cmd = ("taskset", "-c", str(cpu), str(exe), "udpecho", "-i", pair.b.ifname, "-d", "3600")
    with process.server(cmd, netns=pair.b, stop=signal.SIGINT) as p:
        yield p


@contextlib.contextmanager
def xdp_echo_server(pair: VethPair, mode: str = "generic") -> Iterator[Any]:
    """Attach the in-kernel sockperf echo to ``pair.b`` for the duration; yields the attachment.

    The XDP program (``kbypass._core.UdpEcho``, assembled in Rust) does what
    :func:`sockperf_echo` does, in the driver's receive path: a request to
    :data:`SOCKPERF_PORT` that asks for an answer and is not a warm-up goes back with ``XDP_TX``,
    the client flag cleared, MACs, IPs and ports swapped and the UDP checksum zeroed (IPv4's "no
    checksum"; the IP header's stays valid); other sockperf messages to the port are dropped and
    everything else (ARP) goes on to the kernel.

    ``mode`` is ``"generic"`` by default: in native mode a veth queues what ``XDP_TX`` sends
    for its peer but wakes the peer's receive only when the peer has an XDP program of its own,
    so the answers would wait (measured: none arrive), and a program on the client's end would
    change the client side of the bench for this server alone. Generic XDP runs on the skb the
    veth received and sends it back through the veth's transmit: still no socket, no user space
    and no wake-up.
    """
    from kbypass._core import UdpEcho

    with pair.enter("b"):
        echo = UdpEcho(SOCKPERF_PORT)
        att = echo.attach(pair.b.ifname, mode=mode)
    try:
        yield att
    finally:
        with pair.enter("b"):
            att.detach()


@dataclass
class Result:
    """One server over every round: its measurements and the kernel's of the same rounds."""

    server: str
    rounds: list[Measurement]
    kernel: list[Measurement]

    def values(self, metric: str) -> list[float]:
        """Return ``metric`` (a :class:`Measurement` field) per round."""
        return [float(getattr(m, metric)) for m in self.rounds]

    def ratios(self, metric: str) -> list[float]:
        """Return ``metric`` over the kernel's of the same round, per round.

        Over a kernel's 0: inf, or NaN when both are 0.
        """
        return [
            _ratio(float(getattr(m, metric)), float(getattr(k, metric)))
            for m, k in zip(self.rounds, self.kernel)
        ]

    def ratio(self, metric: str) -> float:
        """Return the median over rounds of :meth:`ratios`."""
        return statistics.median(self.ratios(metric))

    def spread(self, metric: str, ratio: bool = False) -> tuple[float, float, float]:
        """Return (min, median, max) over rounds of ``metric`` or of its ratio to the kernel."""
        v = self.ratios(metric) if ratio else self.values(metric)
        return min(v), statistics.median(v), max(v)

    def to_dict(self) -> dict[str, Any]:
        """Return the rounds, the kernel's rounds and min/median/max of each metric and ratio."""
        d: dict[str, Any] = {"server": self.server}
        for metric in METRICS:
            d[metric] = self.spread(metric)
            d[f"ratio_{metric}"] = self.spread(metric, ratio=True)
        d["rounds"] = [asdict(m) for m in self.rounds]
        d["kernel_rounds"] = [asdict(m) for m in self.kernel]
        return d


def _ratio(a: float, b: float) -> float:
    if b == 0:
        return math.nan if a == 0 or math.isnan(a) else math.inf
    return a / b


Server = Callable[[], contextlib.AbstractContextManager[Any]]


def _pipeline_starter(pair: VethPair, latency: Latency, cpu: int) -> Server:
    return lambda: pipeline_server(pair, latency, cpu)


def run_latency(
    *,
    rounds: int = 1,
    seconds: int = 1,
    modes: Sequence[Latency] = LATENCY_MODES,
    xsk_ref: Path | None = None,
    size: int = 64,
    load: bool = True,
    pair: VethPair | None = None,
    xdp_echo: bool = True,
    offered: float | None = None,
) -> list[Result]:
    """Measure the kernel's UDP server and each subject once per round, on one veth bench.

    Subjects: a Pipeline with :func:`sockperf_echo` per latency mode in ``modes``, the C
    reflector when ``xsk_ref`` names a built ``xsk_ref`` binary, and with ``xdp_echo`` the
    in-kernel XDP echo (:func:`xdp_echo_server`, the floor). Each round measures the kernel
    first, then the subjects in order. With ``load``, each measurement includes sockperf's
    under-load client and :func:`capacity` (at ``offered`` requests/s, default as fast as the
    generator goes). Returns the kernel's :class:`Result` first (ratios 1), then one per
    subject. Needs root and ``sockperf``.
    """
    from kbypass import cpu
    from kbypass.testing import VethPair

    if rounds < 1 or seconds < 1:
        raise ValueError("rounds and seconds must be at least 1 (sockperf runs whole seconds)")
    _sockperf()
    allowed = cpu.allowed()
    client_cpu, server_cpu = allowed[0], allowed[-1]
    with contextlib.ExitStack() as stack:
        bench = pair if pair is not None else stack.enter_context(VethPair())
        servers: list[tuple[str, Server]] = [(KERNEL, lambda: kernel_server(bench, server_cpu))]
        for mode in modes:
            name = f"kbypass Pipeline ({mode})"
            servers.append((name, _pipeline_starter(bench, mode, server_cpu)))
        if xsk_ref is not None:
            servers.append((C_REF, lambda: xsk_ref_server(bench, xsk_ref, server_cpu)))
        if xdp_echo:
            servers.append((XDP_ECHO, lambda: xdp_echo_server(bench)))
        got: dict[str, list[Measurement]] = {name: [] for name, _ in servers}
        for r in range(rounds):
            for name, start in servers:
                with start() as srv:
                    m = measure(
                        bench, name, round=r, seconds=seconds, cpu=client_cpu, size=size,
                        load=load, offered=offered,
                    )  # fmt: skip
                    if isinstance(srv, Pipeline):
                        w = srv.stats()[0]
                        m.extra |= {
                            k: w[k]
                            for k in ("rx", "tx", "batches", "mean_batch", "idle_waits",
                                      "busy_poll", "notes", "handler_errors")
                        }  # fmt: skip
                got[name].append(m)
        kernel = got[KERNEL]
        return [Result(name, got[name], kernel) for name, _ in servers]


def summarize(results: Sequence[Result]) -> str:
    """Format the results as a text table.

    Each metric as min / median / max over rounds, and its median ratio to the kernel's UDP server
    of the same round.
    """
    head = (
        f"{'server':<36} {'RTT p50 µs':>20} {'RTT p99 µs':>20} {'RTT p99.9 µs':>20} "
        f"{'ping-pong msg/s':>22} {'under load msg/s':>24} {'capacity answers/s':>24} "
        f"{'offered/s':>10}"
    )
    lines = [head]
    for r in results:
        cells = []
        for metric in METRICS:
            if all(math.isnan(v) for v in r.values(metric)):
                cells.append("-")  # not measured (no load runs)
                continue
            lo, mid, hi = r.spread(metric)
            rate = metric.endswith(("per_s", "_aps"))
            scale, fmt = (1e3, "{:.0f}k") if rate else (1.0, "{:.1f}")
            cell = "/".join(fmt.format(v / scale) for v in (lo, mid, hi))
            if r.server != KERNEL:
                cell += f" {r.ratio(metric):.2f}x"
            cells.append(cell)
        offered = statistics.median(r.values("capacity_offered_per_s")) / 1e6
        off = "-" if math.isnan(offered) else f"{offered:.2f}M"
        lines.append(
            f"{r.server:<36} {cells[0]:>20} {cells[1]:>20} {cells[2]:>20} {cells[3]:>22} "
            f"{cells[4]:>24} {cells[5]:>24} {off:>10}"
        )
    lines.append(
        "(min/median/max over rounds; Nx: the median over rounds of the ratio to the kernel's "
        "UDP server measured in the same round; capacity: answers per second counted while the "
        "XDP generator offered sockperf requests at the median rate in 'offered/s')"
    )
    return "\n".join(lines)
