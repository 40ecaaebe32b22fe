"""Packet processors in Python: ``Pipeline``, verdicts, and the per-packet ``processor``.

A :class:`Pipeline` runs poll-mode workers: Rust threads, each owning one or more AF_XDP
sockets of an :class:`~kbypass.XdpPort`. A worker polls without the GIL, parses the headers of
a burst in Rust, takes the GIL once to call your handler with a :class:`~kbypass.Batch`, then
applies the verdicts without the GIL:

* ``DROP``: the frame goes back to the FILL ring at once;
* ``TX``: the frame (as edited) goes out of the socket it came in on;
* ``FORWARD``: out of socket ``batch.forward_to[i]`` of the port, zero-copy (the sockets
  share one UMEM, only the descriptor moves): directly when this worker owns it, else through
  the owning worker's inbox, a lock-free ring (``forward_ring_full`` counts what a full inbox
  refused);
* ``KEEP``: the frame stays with Python; ``Pipeline.kept()`` returns :class:`~kbypass.Kept`
  handles whose ``release()`` gives the frames back.

A handler can also build frames: ``batch.set_length(i, n)`` / ``set_lengths`` change where a
packet ends, ``batch.push_front(i, n)`` / ``pop_front`` / ``adjust_head(delta, mask)`` where it
starts, inside its frame (the room in front is the kernel's 256 bytes plus ``headroom=``; a VLAN
tag or an outer IPv4+UDP header fits in it), and ``batch.emit(data)`` sends a new frame after
the batch's own (False, counted in ``emit_failed``, when no UMEM frame is free).

Nothing Python can still see is recycled: a frame whose view (``batch.frame(i)``,
``batch.frames``, ``Packet.data``) outlives the handler is held until the last view is gone
(``stats()["escaped"]``; a TX/FORWARD verdict then sends a copy), and column arrays a handler
keeps are its own (the next batch gets fresh ones).

Waiting: with ``latency="adaptive"`` (the default) an idle worker keeps polling for ``spin``
seconds (100 µs) after its last packet, then sleeps in poll(2) until a packet or ``stop()`` wakes
it; ``"busy"`` never sleeps (with the kernel's busy polling where accepted); ``"sleep"`` sleeps
``idle_wait`` after 512 empty polls.

Stopping: ``stop()`` from inside a handler ends the workers after the current batch (and
returns None); ``wait()`` and ``run()`` answer Ctrl-C within 50 ms; a Pipeline still running
when the interpreter exits is closed by an ``atexit`` hook (workers stopped, sockets returned,
program detached) before the interpreter starts tearing down.

The per-packet mode (``per_packet=`` or :func:`processor`) calls a function once per packet
with a :class:`~kbypass.Packet`: convenient, and several times slower than a batch handler
working on NumPy columns.

Example::

    import numpy as np
    import kbypass

    def reflect_9000(batch: kbypass.Batch) -> None:
        h = batch.headers
        hit = h["dst_port"] == 9000
        batch.verdicts[:] = np.where(hit, kbypass.TX, kbypass.DROP)
        batch.reflect(hit)  # MACs, IPs and ports swapped, checksums fixed

    with kbypass.Pipeline("eth0", reflect_9000, filter="udp") as p:
        p.run(duration=10)
        print(p.stats())
"""

from __future__ import annotations

import atexit
import enum
import sys
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

from kbypass import _core
from kbypass._core import Batch, Engine, EngineConfig, Kept, Packet, XdpPort

if TYPE_CHECKING:
    from kbypass._processes import ProcessGroup
    from kbypass.xdp_table import XdpTable

__all__ = [
    "DROP",
    "FORWARD",
    "KEEP",
    "TX",
    "Action",
    "Latency",
    "Pipeline",
    "processor",
]


class Action(enum.IntEnum):
    """What a handler decides for a frame (the values of ``Batch.verdicts``)."""

    DROP = _core.DROP
    TX = _core.TX
    FORWARD = _core.FORWARD
    KEEP = _core.KEEP


DROP = Action.DROP
TX = Action.TX
FORWARD = Action.FORWARD
KEEP = Action.KEEP

OnError = Literal["drop", "pass", "stop"]
Latency = Literal["adaptive", "busy", "sleep"]


class _Workers(Protocol):
    """What a :class:`Pipeline` drives: an ``Engine`` (threads) or a ``ProcessGroup``."""

    @property
    def running(self) -> bool: ...
    @property
    def held(self) -> int: ...
    @property
    def elapsed(self) -> float: ...
    @property
    def last_error(self) -> str | None: ...
    @property
    def workers(self) -> list[list[int]]: ...
    def start(self, packets: int | None = None) -> None: ...
    def stop(self) -> dict[str, Any] | None: ...
    def wait(self, timeout: float | None = None) -> bool: ...
    def stats(self) -> list[dict[str, Any]]: ...
    def kept(self) -> list[Kept]: ...
    def check_accounting(self) -> dict[str, Any]: ...


_TOTAL_KEYS = (
    "rx",
    "rx_bytes",
    "tx",
    "forwarded",
    "dropped",
    "kept",
    "released",
    "escaped",
    "copied",
    "emitted",
    "emit_failed",
    "forward_ring_full",
    "forwarded_out",
    "forwarded_in",
    "forward_in_failed",
    "forward_wakeups",
    "handler_errors",
    "bad_verdicts",
    "tx_failed",
    "batches",
)


class Pipeline:
    """Poll-mode workers running a Python handler over AF_XDP sockets.

    Args:
        port: an interface name (the pipeline opens and closes an :class:`~kbypass.XdpPort`
            on it) or an open ``XdpPort`` (left open).
        handler: ``def handler(batch: Batch) -> None | Action``; writes ``batch.verdicts``
            (pre-filled with ``default``) or returns one verdict for the whole batch.
        per_packet: ``def handler(pkt: Packet) -> Action | None`` instead of a batch handler.
        queues: "all" or a list of queue ids (only when ``port`` is a name).
        batch: descriptors per batch, 1..=4096.
        workers: number of worker threads (sockets dealt round-robin), or explicit groups of
            socket indexes, e.g. ``[[0, 1]]`` for one worker owning both sockets (FORWARD between
            them then needs no handoff, and ``emit(socket=)`` may name either); every socket in
            exactly one group. Default: one worker per socket.
        cpus: one CPU per worker, ``None`` to choose with :func:`kbypass.cpu.worker_cpu` (the
            NIC's node, away from the queue's IRQ), or ``False`` to leave workers unpinned.
        filter: XDP match rules (only matching frames reach the pipeline).
        table: an :class:`~kbypass.XdpTable` as the XDP program instead of the port's own
            filter program (only when ``port`` is a name; else open the port with
            ``XdpPort(ifname, program=table)``): frames its entries "allow" reach the
            pipeline, and a handler's ``table.block(...)`` / ``table.block_sources(batch,
            mask)`` drops a source in the kernel from the next frame on. The table is
            attached while the pipeline's port is open (unless it already was) and stays the
            caller's: closing the pipeline never closes it.
        on_error: what a handler that raises or returns a wrong value means for its batch:
            "drop" (frames back to FILL), "pass" (every frame gets ``default``, as if the handler
            had accepted the batch untouched: AF_XDP cannot hand frames back to the kernel's
            stack, so "pass" means "let the pipeline's default happen"), "stop" (drop the batch
            and stop the pipeline). Errors are counted in ``stats()``; the first traceback is
            printed once.
        default: the verdict every frame starts with (DROP).
        progress: show a live ``rich`` display during ``run()``; default: when stdout is a TTY.
        headroom: bytes kept free in each UMEM frame before the kernel's 256 (``XDP_UMEM_REG``'s
            ``headroom``), so handlers can push more than 256 bytes in front of a packet
            (``batch.push_front``); received packets start after both.
        mode, frames, frame_size, xdp_mode: passed to ``XdpPort`` when ``port`` is a name.
        tx_metadata: AF_XDP TX metadata for the port's UMEM (``XdpPort(tx_metadata=)``):
            ``"offload"`` (frames made by ``emit_template`` leave their UDP/TCP checksum to the
            driver), ``"kernel"`` (the kernel completes it in software), or None (kbypass
            computes it); a kernel without TX metadata leaves it off, said in ``port.notes``.
        latency: how a worker waits when its sockets are idle. ``"adaptive"`` (the default):
            keep polling for ``spin`` seconds after the last packet, then sleep in poll(2) on
            the sockets until a packet (or ``stop()``) wakes it; traffic that keeps coming
            within ``spin`` never waits for a wake-up. ``"busy"``: never sleep (one CPU per
            worker at 100 %), with the kernel's busy polling (``SO_PREFER_BUSY_POLL``,
            ``SO_BUSY_POLL``, ``SO_BUSY_POLL_BUDGET``) on the sockets where it accepts them,
            plain spinning where not (``stats()[i]["busy_poll"]`` and ``["notes"]`` say which).
            ``"sleep"``: 512 empty polls, then a sleep of ``idle_wait`` (the behaviour before
            these modes; the lowest CPU use, the highest latency).
        spin: the adaptive mode's polling time after the last packet, in [0, 0.1] seconds
            (default 100 µs: longer than a request/response round trip on a local network).
        idle_wait: the longest one idle sleep lasts, in (0, 1] seconds. A worker sleeping in
            poll(2) wakes at once on a packet or ``stop()``.

    Example:
        >>> def count_dns(batch):
        ...     batch.verdicts[:] = kbypass.DROP
        ...     counts["dns"] += int((batch.headers["dst_port"] == 53).sum())
        >>> with kbypass.Pipeline("eth0", count_dns, filter="udp") as p:
        ...     p.run(duration=5)

        With a rule table, the handler's decisions go into the kernel:

        >>> table = kbypass.XdpTable(default="pass")
        >>> _ = table.add("udp dst port 53", "allow")
        >>> def police(batch):
        ...     table.block_sources(batch, batch.headers["payload_len"] > 512, seconds=30)
        >>> with kbypass.Pipeline("eth0", police, table=table) as p:
        ...     p.run(duration=5)
    """

    def __init__(
        self,
        port: str | XdpPort,
        handler: Callable[[Batch], Any] | None = None,
        *,
        per_packet: Callable[[Packet], Any] | None = None,
        queues: Literal["all"] | Sequence[int] = "all",
        batch: int = 64,
        workers: int | Sequence[Sequence[int]] | None = None,
        cpus: Sequence[int | None] | Literal[False] | None = None,
        filter: Any = None,
        table: XdpTable | None = None,
        on_error: OnError = "drop",
        default: Action | int = Action.DROP,
        progress: bool | None = None,
        mode: str = "auto",
        frames: int | None = None,
        frame_size: int = 2048,
        headroom: int = 0,
        xdp_mode: str = "auto",
        tx_metadata: Literal["offload", "kernel"] | None = None,
        idle_wait: float = 0.001,
        processes: int | None = None,
        latency: Latency = "adaptive",
        spin: float | None = None,
    ) -> None:
        if (handler is None) == (per_packet is None):
            raise TypeError("give exactly one of handler= (per batch) or per_packet=")
        fn = handler if handler is not None else per_packet
        if not callable(fn):
            raise TypeError("the handler must be callable")
        # Checked (in Rust) before any port opens; groups and CPUs again against the port.
        config = EngineConfig(
            batch=batch,
            workers=workers if processes is None else None,
            cpus=cpus,
            default=int(default),
            on_error=on_error,
            idle_wait=idle_wait,
            latency=latency,
            spin=spin,
        )
        self._own_port = isinstance(port, str)
        self._progress = progress
        self._closed = False
        self.port: XdpPort | ProcessGroup
        self._engine: _Workers
        if processes is not None:
            if not isinstance(port, str):
                raise TypeError("processes= needs an interface name: each process opens its queue")
            from kbypass._processes import ProcessGroup  # json, signal: only when used

            group = ProcessGroup(
                port,
                fn,
                per_packet is not None,
                queues,
                processes,
                filter,
                table,
                xdp_mode,
                dict(
                    batch=batch,
                    cpus=cpus,
                    on_error=on_error,
                    default=int(default),
                    mode=mode,
                    frames=frames,
                    frame_size=frame_size,
                    headroom=headroom,
                    tx_metadata=tx_metadata,
                    idle_wait=idle_wait,
                    latency=latency,
                    spin=spin,
                ),
            )
            self.port = group
            self._engine = group
            _LIVE.add(self)
            return
        if isinstance(port, str):
            self.port = XdpPort(
                port,
                queues=queues if isinstance(queues, str) else list(queues),
                mode=mode,
                filter=filter,
                frames=frames,
                frame_size=frame_size,
                headroom=headroom,
                xdp_mode=xdp_mode,
                program=table,
                tx_metadata=tx_metadata,
            )
        elif isinstance(port, XdpPort):
            if filter is not None or headroom or tx_metadata is not None:
                raise ValueError(
                    "filter=, headroom= and tx_metadata= apply when the pipeline opens the "
                    "port: give them to XdpPort"
                )
            if table is not None:
                raise ValueError(
                    "table= applies when the pipeline opens the port: open it with "
                    "XdpPort(ifname, program=table)"
                )
            self.port = port
        else:
            raise TypeError("port must be an interface name or a kbypass.XdpPort")
        try:
            self._engine = Engine(self.port, fn, config, per_packet=per_packet is not None)
        except BaseException:
            if self._own_port:
                self.port.close()
            raise
        _LIVE.add(self)

    # lifecycle -----------------------------------------------------------------------------

    def start(self, packets: int | None = None) -> None:
        """Start the workers (in the background); ``packets`` stops them after that many."""
        self._check_open()
        self._engine.start(packets)

    def stop(self) -> dict[str, Any] | None:
        """Stop the workers; returns the frame accounting (raises if a frame is unaccounted).

        From inside a handler it only asks the workers to stop after the current batch and
        returns None: a worker cannot join itself. ``wait()`` or ``stop()`` from outside then
        joins them.
        """
        acc = self._engine.stop()
        return None if acc is None else dict(acc)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the workers to end by themselves; returns whether they did.

        They end on the packet limit, ``on_error="stop"`` or a handler's ``stop()``. Ctrl-C
        interrupts the wait (within 50 ms).
        """
        return bool(self._engine.wait(timeout))

    @property
    def running(self) -> bool:
        """Whether workers are running."""
        return bool(self._engine.running)

    def run(self, duration: float | None = None, packets: int | None = None) -> dict[str, Any]:
        """Run until ``duration`` seconds pass, ``packets`` arrived, or Ctrl-C.

        Ctrl-C (SIGINT) stops the workers cleanly, then KeyboardInterrupt propagates. Returns
        the totals (see :meth:`totals`).
        """
        if duration is not None and duration <= 0:
            raise ValueError("duration must be positive seconds, or None")
        self.start(packets)
        show = self._progress if self._progress is not None else sys.stdout.isatty()
        try:
            with self._display(show) as tick:
                deadline = None if duration is None else time.monotonic() + duration
                while True:
                    step = 0.1
                    if deadline is not None:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            break
                        step = min(step, left)
                    if self._engine.wait(step):
                        break
                    tick()
        finally:
            # Runs on KeyboardInterrupt too: workers stop, sockets go back, accounting checked.
            self.stop()
        return self.totals()

    def close(self) -> None:
        """Stop, and close the port when the pipeline opened it. Idempotent.

        Raises RuntimeError inside a handler (the workers still run there): call ``stop()``
        in the handler and ``close()`` outside.
        """
        if self._closed:
            return
        stopped = False
        try:
            stopped = self._engine.stop() is not None
        finally:
            if stopped or not self.running:
                self._closed = True
                _LIVE.discard(self)
                if self._own_port:
                    self.port.close()
        if not stopped:
            raise RuntimeError(
                "close() inside a handler: the workers stop after this batch; close the "
                "Pipeline from outside the handler (after wait())"
            )

    def __enter__(self) -> Pipeline:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # results ------------------------------------------------------------------------------

    def stats(self) -> list[dict[str, Any]]:
        """Return per-worker counters.

        Keys: rx, tx, forwarded, dropped, kept, released, escaped (frames whose views outlived
        their batch: held until the views are gone), copied (of those, TX/FORWARD sent as a
        copy), emitted (frames ``batch.emit`` sent), emit_failed (emits that sent nothing: no
        free frame, TX ring full, or the handler failed after emitting), forward_ring_full
        (FORWARDs to another worker's socket its inbox had no room for), forwarded_out (of
        forwarded, those handed to another worker's inbox), forwarded_in (frames other workers
        handed over and this one sent), forward_in_failed (handed over, not sent: TX ring full,
        or the pipeline stopped first), forward_wakeups (times this worker woke a sleeping
        worker it handed frames to), handler_errors, bad_verdicts, tx_failed,
        batches, mean_batch, batch_latency_ns, handler_ns, pps, batch_sizes (histogram), queues,
        cpu, latency (the mode), idle_waits (times the worker slept), busy_poll
        (``latency="busy"`` with the kernel's busy polling accepted on every socket), notes (what
        could not be done as asked).
        """
        return list(self._engine.stats())

    def totals(self) -> dict[str, Any]:
        """Counters summed over workers, plus pps, elapsed seconds and frames held now.

        pps is the sum of the worker rates; held counts frames kept, or with views that
        outlived their batch, right now. ``forward_in_flight`` is what was handed to another
        worker and not yet taken by it, so that ``forwarded_out == forwarded_in +
        forward_in_failed + forward_in_flight`` (0 in flight once stopped).
        """
        ws = self.stats()
        t: dict[str, Any] = {k: sum(int(w[k]) for w in ws) for k in _TOTAL_KEYS}
        t["pps"] = sum(float(w["pps"]) for w in ws)
        # Frames handed to another worker's inbox and not taken yet (0 once stopped):
        # forwarded_out == forwarded_in + forward_in_failed + forward_in_flight.
        # A sender counts forwarded_out before it publishes, so this is never below 0 per
        # worker; the workers' counters are read one after another, so while they run it is
        # a snapshot, clamped at 0.
        t["forward_in_flight"] = max(
            0, t["forwarded_out"] - t["forwarded_in"] - t["forward_in_failed"]
        )
        t["held"] = int(self._engine.held)
        t["elapsed"] = float(self._engine.elapsed)
        t["last_error"] = self._engine.last_error
        return t

    def kept(self) -> list[Kept]:
        """Return handles of frames kept (KEEP) since the last call; release() each."""
        return list(self._engine.kept())

    def check_accounting(self) -> dict[str, Any]:
        """Where the UMEM's frames are; raises RuntimeError if any is unaccounted for."""
        return dict(self._engine.check_accounting())

    @property
    def last_error(self) -> str | None:
        """The latest handler error, or None."""
        e = self._engine.last_error
        return None if e is None else str(e)

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError("this Pipeline is closed: create a new one")

    @contextmanager
    def _display(self, show: bool) -> Iterator[Callable[[], None]]:
        if not show:
            yield lambda: None
            return
        try:
            from rich.live import Live
            from rich.table import Table
        except ImportError:  # rich is an optional extra
            yield lambda: None
            return

        def table() -> Table:
            t = Table(title=f"kbypass pipeline on {self.port.ifname}")
            for col in ("worker", "queues", "rx", "pps", "tx", "fwd", "drop", "kept", "errors"):
                t.add_column(col, justify="right")
            for w in self.stats():
                t.add_row(
                    str(w["worker"]),
                    ",".join(map(str, w["queues"])),
                    f"{w['rx']:,}",
                    f"{w['pps'] / 1e6:.2f} M",
                    f"{w['tx']:,}",
                    f"{w['forwarded']:,}",
                    f"{w['dropped']:,}",
                    f"{w['kept']:,}",
                    f"{w['handler_errors'] + w['bad_verdicts']:,}",
                )
            return t

        with Live(table(), refresh_per_second=4, transient=False) as live:
            yield lambda: live.update(table())

    def __repr__(self) -> str:
        return (
            f"Pipeline({self.port.ifname!r}, workers={self._engine.workers}, "
            f"{'running' if self.running else 'stopped'})"
        )


# Pipelines not yet closed, for the exit hook below.
_LIVE: weakref.WeakSet[Pipeline] = weakref.WeakSet()


@atexit.register
def _close_all() -> None:
    """Close every Pipeline still open at interpreter exit.

    atexit hooks run while the interpreter is intact, so workers can finish the batch they are
    in (they need the GIL for it); once finalization starts a thread that takes the GIL is
    ended by CPython in the middle of the worker. Closing stops and joins the workers, returns
    the sockets, and detaches the program of ports the pipelines opened.
    """
    for p in list(_LIVE):
        try:
            p.close()
        except Exception as e:  # exiting anyway: report, and close the others
            print(f"kbypass: closing {p!r} at exit: {e}", file=sys.stderr)


def processor(port: str | XdpPort, **options: Any) -> Callable[[Callable[[Packet], Any]], Pipeline]:
    """Turn a per-packet function into a :class:`Pipeline` (not started).

    Example:
        >>> @kbypass.processor("eth0", filter="udp dst port 9000")
        ... def reflect(pkt):
        ...     pkt.reflect()  # MACs, IPs and ports swapped, checksums fixed
        ...     return kbypass.TX
        >>> reflect.run(duration=10)
    """

    def wrap(fn: Callable[[Packet], Any]) -> Pipeline:
        return Pipeline(port, per_packet=fn, **options)

    return wrap
