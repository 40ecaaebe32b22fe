"""Packet processors in Python: ``Pipeline``, verdicts, and the per-packet ``processor``.

A :class:`Pipeline` runs poll-mode workers: Rust threads, each owning one or more AF_XDP
sockets of an :class:`~kbypass.XdpPort`. A worker polls without the GIL, parses the headers of
a burst in Rust, takes the GIL once to call your handler with a :class:`~kbypass.Batch`, then
applies the verdicts without the GIL:

* ``DROP``: the frame goes back to the FILL ring at once;
* ``TX``: the frame (as edited) goes out of the socket it came in on;
* ``FORWARD``: out of socket ``batch.forward_to[i]`` of the same worker, zero-copy (the
  sockets share one UMEM, only the descriptor moves);
* ``KEEP``: the frame stays with Python; ``Pipeline.kept()`` returns :class:`~kbypass.Kept`
  handles whose ``release()`` gives the frames back.

Nothing Python can still see is recycled: a frame whose view (``batch.frame(i)``,
``batch.frames``, ``Packet.data``) outlives the handler is held until the last view is gone
(``stats()["escaped"]``; a TX/FORWARD verdict then sends a copy), and column arrays a handler
keeps are its own (the next batch gets fresh ones).

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
        batch.swap_macs(hit); batch.swap_ips(hit); batch.swap_ports(hit)
        batch.fix_checksums(hit)

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
from typing import Any, Literal

from kbypass import _core
from kbypass._core import Batch, Engine, EngineConfig, Kept, Packet, XdpPort

__all__ = [
    "DROP",
    "FORWARD",
    "KEEP",
    "TX",
    "Action",
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
            socket indexes, e.g. ``[[0, 1]]`` for one worker owning both sockets (needed for
            FORWARD between them). Default: one worker per socket.
        cpus: one CPU per worker, ``None`` to choose with :func:`kbypass.cpu.worker_cpu` (the
            NIC's node, away from the queue's IRQ), or ``False`` to leave workers unpinned.
        filter: XDP match rules (only matching frames reach the pipeline).
        on_error: what a handler that raises or returns a wrong value means for its batch:
            "drop" (frames back to FILL), "pass" (every frame gets ``default``, as if the handler
            had accepted the batch untouched: AF_XDP cannot hand frames back to the kernel's
            stack, so "pass" means "let the pipeline's default happen"), "stop" (drop the batch
            and stop the pipeline). Errors are counted in ``stats()``; the first traceback is
            printed once.
        default: the verdict every frame starts with (DROP).
        progress: show a live ``rich`` display during ``run()``; default: when stdout is a TTY.
        mode, frames, frame_size, xdp_mode: passed to ``XdpPort`` when ``port`` is a name.

    Example:
        >>> def count_dns(batch):
        ...     batch.verdicts[:] = kbypass.DROP
        ...     counts["dns"] += int((batch.headers["dst_port"] == 53).sum())
        >>> with kbypass.Pipeline("eth0", count_dns, filter="udp") as p:
        ...     p.run(duration=5)
    """

    def __init__(
        self,
        port: str | XdpPort,
        handler: Callable[[Batch], Any] | None = None,
        *,
        per_packet: Callable[[Packet], Any] | None = None,
        queues: str | Sequence[int] = "all",
        batch: int = 64,
        workers: int | Sequence[Sequence[int]] | None = None,
        cpus: Sequence[int | None] | Literal[False] | None = None,
        filter: Any = None,
        on_error: OnError = "drop",
        default: Action | int = Action.DROP,
        progress: bool | None = None,
        mode: str = "auto",
        frames: int | None = None,
        frame_size: int = 2048,
        xdp_mode: str = "auto",
        idle_wait: float = 0.001,
        processes: int | None = None,
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
        )
        self._own_port = isinstance(port, str)
        self._progress = progress
        self._closed = False
        if processes is not None:
            if not isinstance(port, str):
                raise TypeError("processes= needs an interface name: each process opens its queue")
            group = _ProcessGroup(
                port,
                fn,
                per_packet is not None,
                queues,
                processes,
                filter,
                xdp_mode,
                dict(
                    batch=batch,
                    cpus=cpus,
                    on_error=on_error,
                    default=int(default),
                    mode=mode,
                    frames=frames,
                    frame_size=frame_size,
                    idle_wait=idle_wait,
                ),
            )
            self.port: Any = group
            self._engine: Any = group
            _LIVE.add(self)
            return
        if isinstance(port, str):
            q: Any = queues if queues == "all" else list(queues)
            self.port = XdpPort(
                port,
                queues=q,
                mode=mode,
                filter=filter,
                frames=frames,
                frame_size=frame_size,
                xdp_mode=xdp_mode,
            )
        elif isinstance(port, XdpPort):
            if filter is not None:
                raise ValueError(
                    "filter= applies when the pipeline opens the port: give it to XdpPort"
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
        copy), handler_errors, bad_verdicts, tx_failed, batches, mean_batch, batch_latency_ns,
        handler_ns, pps, batch_sizes (histogram), queues, cpu.
        """
        return list(self._engine.stats())

    def totals(self) -> dict[str, Any]:
        """Counters summed over workers, plus pps, elapsed seconds and frames held now.

        pps is the sum of the worker rates; held counts frames kept, or with views that
        outlived their batch, right now.
        """
        ws = self.stats()
        t: dict[str, Any] = {k: sum(int(w[k]) for w in ws) for k in _TOTAL_KEYS}
        t["pps"] = sum(float(w["pps"]) for w in ws)
        t["held"] = int(getattr(self._engine, "held", 0))
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
        ...     pkt.swap_macs(); pkt.swap_ips(); pkt.swap_ports(); pkt.fix_checksums()
        ...     return kbypass.TX
        >>> reflect.run(duration=10)
    """

    def wrap(fn: Callable[[Packet], Any]) -> Pipeline:
        return Pipeline(port, per_packet=fn, **options)

    return wrap


class _ProcessGroup:
    """``Pipeline(processes=N)``: one worker process per queue, for builds with a GIL.

    The parent loads and attaches the XDP program (it owns the program, its XSKMAP and the
    bpf_link). It then forks one child per queue *at construction*, so the children inherit
    the map's fd and the caller's network namespace, and the handler without pickling. Each
    child opens its own UMEM and socket for its queue (``XdpPort(program=False)``), puts the
    socket into the inherited XSKMAP, and runs an ordinary one-worker Pipeline. Parent and
    children talk over pipes, one JSON line per command (start / stats / stop / exit). If the
    parent dies the bpf_link detaches the program and the children read EOF and exit.
    """

    def __init__(
        self,
        ifname: str,
        fn: Callable[..., Any],
        per_packet: bool,
        queues: str | Sequence[int],
        processes: int,
        filter: Any,
        xdp_mode: str,
        opts: dict[str, Any],
    ) -> None:
        import os

        from kbypass.xdp import XdpProgram

        if queues == "all":
            probe = XdpPort(ifname, queues="all", program=False, frames=256, ring_size=64)
            qs = list(probe.queues)
            probe.close()
        else:
            qs = [int(x) for x in queues]
        if processes != len(qs):
            raise ValueError(
                f"processes={processes} but {len(qs)} queue(s) {qs}: one process per queue"
            )
        cpus = opts.pop("cpus")
        if cpus not in (None, False) and len(cpus) != len(qs):
            raise ValueError("cpus needs one entry per process")
        self.ifname = ifname
        self.queues = qs
        self.workers = [[i] for i in range(len(qs))]
        self.last_error: str | None = None
        self._final: list[dict[str, Any]] = []
        self._acc: dict[str, Any] = {}
        self._running = False
        self._t0 = 0.0
        self._elapsed = 0.0
        self._prog = XdpProgram(filter, queues=max(qs) + 1)
        self._children: list[tuple[int, Any, Any]] = []
        self._link: Any = None
        try:
            self._link = self._prog._prog.attach(ifname, mode=xdp_mode)
            for i, q in enumerate(qs):
                cpu = None if cpus in (None, False) else [cpus[i]]
                self._children.append(self._fork(ifname, q, fn, per_packet, opts, cpu, os))
            for c in self._children:
                self._expect(c, "ready")
        except BaseException:
            self.close()
            raise

    def _fork(
        self,
        ifname: str,
        q: int,
        fn: Callable[..., Any],
        per_packet: bool,
        opts: dict[str, Any],
        cpu: list[int] | None,
        os: Any,
    ) -> tuple[int, Any, Any]:
        import json
        import signal

        down_r, down_w = os.pipe()
        up_r, up_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # child
            code = 0
            try:
                os.close(down_w)
                os.close(up_r)
                signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent stops us
                cmd = os.fdopen(down_r, "r")
                out = os.fdopen(up_w, "w")
                port = XdpPort(
                    ifname,
                    queues=[q],
                    program=False,
                    mode=opts["mode"],
                    frames=opts["frames"],
                    frame_size=opts["frame_size"],
                )
                self._prog.set_socket(q, port.sockets[0].fileno())
                kw = {k: opts[k] for k in ("batch", "on_error", "default", "idle_wait")}
                p = (
                    Pipeline(port, per_packet=fn, cpus=cpu or False, **kw)
                    if per_packet
                    else Pipeline(port, fn, cpus=cpu or False, **kw)
                )
                out.write(json.dumps("ready") + "\n")
                out.flush()
                for line in cmd:
                    op, _, arg = line.strip().partition(" ")
                    if op == "start":
                        p.start(int(arg) if arg else None)
                        reply: Any = "ok"
                    elif op == "stats":
                        reply = {"stats": p.stats(), "done": p.wait(0), "err": p.last_error}
                    elif op == "stop":
                        reply = {"acc": p.stop(), "stats": p.stats(), "err": p.last_error}
                    else:
                        break
                    out.write(json.dumps(reply) + "\n")
                    out.flush()
                p.close()
                port.close()
            except BaseException:
                _traceback_print()
                code = 1
            finally:
                os._exit(code)
        os.close(down_r)
        os.close(up_w)
        return pid, os.fdopen(down_w, "w"), os.fdopen(up_r, "r")

    @staticmethod
    def _ask(child: tuple[int, Any, Any], cmd: str) -> Any:
        import json

        _, w, r = child
        w.write(cmd + "\n")
        w.flush()
        line = r.readline()
        if not line:
            raise RuntimeError(f"worker process {child[0]} exited (see its traceback above)")
        return json.loads(line)

    @staticmethod
    def _expect(child: tuple[int, Any, Any], what: str) -> None:
        import json

        line = child[2].readline()
        if not line or json.loads(line) != what:
            raise RuntimeError(
                f"worker process {child[0]} failed to start (see its traceback above)"
            )

    def start(self, packets: int | None = None) -> None:
        if self._running:
            raise RuntimeError("the pipeline is already running: stop() it first")
        self._limit = packets
        for c in self._children:
            self._ask(c, "start")
        self._running = True
        self._t0 = time.monotonic()

    def stats(self) -> list[dict[str, Any]]:
        if not self._running:
            return self._final
        out = []
        for i, c in enumerate(self._children):
            rep = self._ask(c, "stats")
            w = dict(rep["stats"][0], worker=i)
            out.append(w)
            self.last_error = rep["err"] or self.last_error
        return out

    def wait(self, timeout: float | None = None) -> bool:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self._running:
            ws = self.stats()
            if self._limit is not None and sum(int(w["rx"]) for w in ws) >= self._limit:
                return True
            if deadline is not None and time.monotonic() >= deadline:
                return False
            time.sleep(0.02)
        return True

    @property
    def running(self) -> bool:
        return self._running

    def stop(self) -> dict[str, Any]:
        if self._running:
            final, accs = [], []
            for i, c in enumerate(self._children):
                rep = self._ask(c, "stop")
                final.append(dict(rep["stats"][0], worker=i))
                accs.append(rep["acc"])
                self.last_error = rep["err"] or self.last_error
            self._final = final
            self._elapsed = time.monotonic() - self._t0
            self._running = False
            keys = ("free", "rx_side", "app", "tx_side", "total")
            self._acc = {k: sum(int(a[k]) for a in accs) for k in keys}
            self._acc["balanced"] = all(a["balanced"] for a in accs)
        return dict(self._acc)

    def check_accounting(self) -> dict[str, Any]:
        if self._running:
            raise RuntimeError("the worker processes are running: stop() first")
        return dict(self._acc)

    def kept(self) -> list[Kept]:
        raise RuntimeError(
            "kept frames live in the worker processes: with processes=, release them in the "
            "handler's own process (or use threads)"
        )

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0 if self._running else self._elapsed

    def __len__(self) -> int:
        return len(self.queues)

    def close(self) -> None:
        import os

        children, self._children = getattr(self, "_children", []), []
        for pid, w, r in children:
            try:
                w.write("exit\n")
                w.flush()
            except OSError:
                pass
            for f in (w, r):
                try:
                    f.close()
                except OSError:
                    pass
            os.waitpid(pid, 0)
        link = getattr(self, "_link", None)
        if link is not None:
            link.detach()
            self._link = None
        self._prog.close()


def _traceback_print() -> None:
    """Print the active exception (in a worker process, before it exits)."""
    import traceback

    traceback.print_exc()
