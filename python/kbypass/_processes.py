"""``Pipeline(processes=N)``: one worker process per queue, for Python builds with a GIL.

Internal: :class:`kbypass.Pipeline` drives a :class:`ProcessGroup` the way it drives its
``Engine`` (the ``_Workers`` protocol in :mod:`kbypass.pipeline`).
"""

from __future__ import annotations

import json
import os
import signal
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from kbypass._core import Kept, XdpPort
from kbypass.xdp import XdpProgram
from kbypass.xdp_table import XdpTable

__all__ = ["ProcessGroup"]


class ProcessGroup:
    """``Pipeline(processes=N)``: one worker process per queue, for builds with a GIL.

    The parent loads and attaches the XDP program (it owns the program, its XSKMAP and the
    bpf_link). It then forks one child per queue *at construction*, so the children inherit
    the map's fd and the caller's network namespace, and the handler without pickling. Each
    child opens its own UMEM and socket for its queue (``XdpPort(program=False)``), puts the
    socket into the inherited XSKMAP, and runs an ordinary one-worker Pipeline. Parent and
    children talk over pipes, one JSON line per command (start / stats / stop / exit). If the
    parent dies the bpf_link detaches the program and the children read EOF and exit.

    With a table (``table=``) the parent holds the table's attachment instead
    (:meth:`XdpTable.hold`: attached unless it is there already, and kept for the pipeline's
    life whoever else attached it, e.g. a port of the parent closed meanwhile; detached at
    close only if nobody else holds or asked for it) and each child opens its port on it
    (``XdpPort(program=table)``), which registers the child's socket in the table's XSKMAP;
    blocks a child's handler pushes live in the kernel's maps, shared by every process.
    """

    def __init__(
        self,
        ifname: str,
        fn: Callable[..., Any],
        per_packet: bool,
        queues: str | Sequence[int],
        processes: int,
        filter: Any,
        table: XdpTable | None,
        xdp_mode: str,
        opts: dict[str, Any],
    ) -> None:
        if table is not None and filter is not None:
            raise ValueError(
                "filter= is for the pipeline's own program; with table= the table's entries "
                'decide: add the filter as an entry, e.g. table.add(filter, "allow")'
            )
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
        self._table = table
        self._prog = XdpProgram(filter, queues=max(qs) + 1) if table is None else None
        self._children: list[tuple[int, Any, Any]] = []
        self._link: Any = None
        self._table_hold: Any = None
        try:
            if self._prog is not None:
                self._link = self._prog.attach(ifname, mode=xdp_mode)
            elif table is not None:
                # A hold of our own, counted with the table's others (a parent port opened on
                # the table, the user's attach()): the program stays attached while the children
                # run, whoever else lets go first, and is detached at close only if nobody else
                # still holds or asked for it.
                self._table_hold = table.hold(ifname, mode=xdp_mode)
            for i, q in enumerate(qs):
                cpu = None if cpus in (None, False) else [cpus[i]]
                self._children.append(self._fork(ifname, q, fn, per_packet, opts, cpu))
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
    ) -> tuple[int, Any, Any]:
        from kbypass.pipeline import Pipeline  # the children run ordinary Pipelines

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
                # On the table: the port registers its socket in the table's XSKMAP and
                # finds the table attached by the parent.
                port = XdpPort(
                    ifname,
                    queues=[q],
                    program=False if self._table is None else self._table,
                    mode=opts["mode"],
                    frames=opts["frames"],
                    frame_size=opts["frame_size"],
                    headroom=opts["headroom"],
                    tx_metadata=opts.get("tx_metadata"),
                )
                if self._prog is not None:
                    self._prog.set_socket(q, port.sockets[0].fileno())
                kw = {
                    k: opts[k]
                    for k in ("batch", "on_error", "default", "idle_wait", "latency", "spin")
                }
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
                traceback.print_exc()
                code = 1
            finally:
                os._exit(code)
        os.close(down_r)
        os.close(up_w)
        return pid, os.fdopen(down_w, "w"), os.fdopen(up_r, "r")

    @staticmethod
    def _ask(child: tuple[int, Any, Any], cmd: str) -> Any:
        _, w, r = child
        w.write(cmd + "\n")
        w.flush()
        line = r.readline()
        if not line:
            raise RuntimeError(f"worker process {child[0]} exited (see its traceback above)")
        return json.loads(line)

    @staticmethod
    def _expect(child: tuple[int, Any, Any], what: str) -> None:
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
    def held(self) -> int:
        """Frames held: they live in the worker processes, none here."""
        return 0

    @property
    def elapsed(self) -> float:
        return time.monotonic() - self._t0 if self._running else self._elapsed

    def __len__(self) -> int:
        return len(self.queues)

    def close(self) -> None:
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
        prog = getattr(self, "_prog", None)
        if prog is not None:
            prog.close()
        hold = getattr(self, "_table_hold", None)
        if hold is not None:
            self._table_hold = None
            hold.release()
