"""``kbypass.capture``: frames off an interface into a pcap file, in a Rust loop.

The loop runs without the GIL and without Python per packet: it receives frames with AF_XDP,
writes them to a pcap file with nanosecond timestamps (readable by tshark, Wireshark, scapy and
dpkt) and gives them straight back to the kernel. Frames that do not match ``filter`` keep going
to the kernel's stack. Without ``write`` it prints one line per frame instead.

Timestamps are the wall clock (CLOCK_REALTIME) read once per burst of frames taken off the RX
ring, so frames of one burst share a timestamp: AF_XDP delivers no per-frame receive time.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any, Literal, Union

from kbypass import _core
from kbypass.xdp import FilterSpec

__all__ = ["capture"]

QueueSpec = Union[int, Sequence[int], Literal["all"], None]


def _positive(name: str, value: object, kind: type) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float) if kind is float else int):
        raise TypeError(f"{name} must be a {kind.__name__}, got {type(value).__name__}")
    if not value > 0:
        raise ValueError(f"{name}={value!r} must be > 0")


def capture(
    ifname: str,
    *,
    queue: int | None = None,
    queues: QueueSpec = None,
    filter: FilterSpec = None,
    count: int | None = None,
    duration: float | None = None,
    write: str | os.PathLike[str] | None = None,
    snaplen: int = 0,
    mode: str = "auto",
    xdp_mode: str = "auto",
    netns: str | None = None,
    frames: int = 4096,
    batch: int = 64,
    force: bool = False,
    interrupt: Literal["raise", "stop"] = "raise",
) -> dict[str, Any]:
    """Capture frames on ``ifname`` until ``count`` frames, ``duration`` seconds or Ctrl-C.

    Args:
        ifname: the interface (inside ``netns`` when given).
        queue: one RX queue (default 0); or ``queues``: a list of queue ids or ``"all"``.
        queues: several RX queues, or ``"all"`` (one AF_XDP socket each, one Rust loop).
        filter: which frames to capture (filter text such as ``"udp dst port 9000"``, a
            :class:`~kbypass.Rule`, or a list of them); the rest stay with the kernel.
        count: stop after exactly this many frames.
        duration: stop after this many seconds.
        write: pcap file to write (``"-"``: stdout); None prints one line per frame to stdout.
        snaplen: bytes kept per frame (0: all).
        mode: ``"auto"``, ``"copy"`` or ``"zerocopy"`` AF_XDP binding.
        xdp_mode: ``"auto"``, ``"native"`` or ``"generic"`` program attach.
        netns: network namespace to capture in (an ``ip netns`` name or a path).
        frames: UMEM frames (half of them wait on the FILL ring per socket).
        batch: frames taken per burst (1..1024).
        force: replace an XDP program on the interface that is not kbypass's.
        interrupt: on Ctrl-C, ``"raise"`` KeyboardInterrupt (after flushing the file and
            detaching) or ``"stop"`` and return the summary. Signals are seen within ~50 ms
            when called from the main thread; from another thread (where Python runs no
            signal handlers) the loop never takes the GIL and ends by count or duration.

    Returns:
        The summary: ``packets``, ``bytes`` (on the wire), ``elapsed``, ``pps``, ``stopped``
        (``count``/``duration``/``signal``), ``kernel_dropped`` and ``kernel`` (XDP_STATISTICS:
        frames the kernel could not hand to the socket), ``queues``, ``xdp_mode``, ``mode``,
        ``notes``, ``file``.

    Example::

        >>> s = kbypass.capture("eth0", filter="udp port 53", count=100, write="dns.pcap")
        >>> print(s["packets"], s["kernel_dropped"])

    Needs root (CAP_NET_ADMIN, CAP_BPF, CAP_IPC_LOCK): otherwise ``PermissionError``.
    """
    if not isinstance(ifname, str):
        raise TypeError(f"ifname must be a str, got {type(ifname).__name__}")
    if queue is not None and queues is not None:
        raise ValueError("give queue or queues, not both")
    if queue is not None:
        if isinstance(queue, bool) or not isinstance(queue, int) or queue < 0:
            raise ValueError(f"queue={queue!r} must be a queue id ≥ 0")
        queues = queue
    _positive("count", count, int)
    _positive("duration", duration, float)
    for name, v in (("snaplen", snaplen), ("frames", frames), ("batch", batch)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"{name}={v!r} must be a non-negative int")
    path = None if write is None else os.fspath(write)
    if path in (None, "-"):
        sys.stdout.flush()  # our lines follow what Python already printed
    summary = _core.capture(
        ifname,
        queues=queues,
        filter=filter,
        count=count,
        duration=None if duration is None else float(duration),
        write=path,
        snaplen=snaplen,
        mode=mode,
        xdp_mode=xdp_mode,
        netns=netns,
        frames=frames,
        batch=batch,
        force=force,
        interrupt=interrupt,
    )
    summary["file"] = path
    return summary
