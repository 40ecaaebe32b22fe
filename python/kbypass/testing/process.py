"""Work inside one end of a :class:`~kbypass.testing.VethPair`, for tests and benches.

- :func:`in_thread`: a call in a thread moved into one end's network namespace, joined later
  (one side of an exchange while the calling thread plays the other).
- :func:`server`: a server process started in a namespace (or where the caller is), waited for
  until it listens, and stopped by its PID when the ``with`` block ends.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import IO, TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from kbypass.testing.veth import VethEnd, VethPair

T = TypeVar("T")

#: How long :func:`server` waits for a process without a port before it counts as started.
SETTLE = 0.3


def in_thread(
    pair: VethPair, side: str | VethEnd, fn: Callable[[], T], timeout: float = 120.0
) -> Callable[[], T]:
    """Start ``fn()`` in a thread inside ``side``'s namespace; return the call that joins it.

    The returned call waits up to ``timeout`` seconds for the thread, then returns what ``fn``
    returned or raises what it raised (any exception, KeyboardInterrupt included). A thread still
    running by then raises :class:`TimeoutError`; it is a daemon thread, so it does not keep the
    interpreter from exiting. Call the join once.

    Example::

        serve = in_thread(pair, "b", lambda: qp_b.pingpong_accept(port=18515))
        with pair.enter("a"):
            qp_a.pingpong_connect(pair.b.ip, 18515)
        remote = serve()
    """
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        with pair.enter(side):
            try:
                result.append(fn())
            except BaseException as e:  # re-raised by the joining call
                error.append(e)

    name = side if isinstance(side, str) else side.netns
    t = threading.Thread(target=run, name=f"in-{name}", daemon=True)
    t.start()

    def join() -> T:
        t.join(timeout)
        if t.is_alive():
            raise TimeoutError(f"the call in {name}'s namespace did not finish in {timeout} s")
        if error:
            raise error[0]
        return result[0]

    return join


def _in_netns(netns: str | VethEnd | None, cmd: Sequence[str]) -> list[str]:
    """``cmd`` run inside ``netns`` (through ``ip netns exec``), or as it is without one."""
    if netns is None:
        return list(cmd)
    name = netns if isinstance(netns, str) else netns.netns
    return ["ip", "netns", "exec", name, *cmd]


def _listening(netns: str | VethEnd | None, port: int, proto: str) -> bool:
    """Whether a socket in ``netns`` listens on ``port`` (TCP) or is bound to it (UDP)."""
    flags = "-Hltn" if proto == "tcp" else "-Hlun"
    ss = subprocess.run(
        _in_netns(netns, ["ss", flags, f"sport = :{port}"]),
        capture_output=True, text=True, check=False, timeout=10,
    )  # fmt: skip
    return bool(ss.stdout.strip())


def _tail(out: IO[bytes], limit: int = 400) -> str:
    out.seek(0)
    return out.read().decode(errors="replace")[-limit:]


def _stop(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    """Send ``sig`` to ``proc`` (by its PID) and wait 5 s for it; SIGKILL it after that."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@contextlib.contextmanager
def server(
    cmd: Sequence[str],
    *,
    netns: str | VethEnd | None = None,
    port: int | None = None,
    proto: str = "tcp",
    ready_timeout: float = 10.0,
    stop: signal.Signals = signal.SIGTERM,
) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``cmd`` for the ``with`` block; yields its process.

    It runs inside network namespace ``netns`` when given (a name, or a
    :class:`~kbypass.testing.VethEnd` such as ``pair.b``), else where the calling thread is.
    With ``port``, it is ready once a socket of its namespace listens on that port (``ss``;
    ``proto="udp"``: a UDP socket bound to it); without, once it ran :data:`SETTLE` seconds.
    On exit it gets ``stop`` (SIGTERM; SIGINT for tools that print a summary then), by its PID,
    and SIGKILL if still there 5 s later. Its output (stdout and stderr) goes to a temporary file.

    Raises RuntimeError, with the end of its output, when it exits before it is ready, and
    TimeoutError (after stopping it) when it is not ready within ``ready_timeout`` seconds.

    Example::

        with server(["iperf3", "-s", "-1", "-p", "5201"], netns=pair.b, port=5201):
            pair.run("a", "iperf3", "-c", pair.b.ip, "-p", "5201", "-t", "1")
    """
    if proto not in ("tcp", "udp"):
        raise ValueError(f"proto is 'tcp' or 'udp', not {proto!r}")
    shown = " ".join(cmd)
    with tempfile.TemporaryFile() as out:
        proc = subprocess.Popen(_in_netns(netns, cmd), stdout=out, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + (ready_timeout if port is not None else SETTLE)
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"`{shown}` exited {proc.returncode}: {_tail(out)}")
                if port is not None and _listening(netns, port, proto):
                    break
                if time.monotonic() >= deadline:
                    if port is None:
                        break
                    raise TimeoutError(
                        f"`{shown}` did not listen on {proto} port {port} in {ready_timeout} s: "
                        f"{_tail(out)}"
                    )
                time.sleep(0.05)
            yield proc
        finally:
            _stop(proc, stop)
