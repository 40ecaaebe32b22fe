"""kbypass.testing.in_thread and kbypass.testing.server on a veth pair (root)."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time
from collections.abc import Iterator

import pytest

from kbypass.testing import VethPair, in_thread, server

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create network namespaces")

PORT = 18790


@pytest.fixture(scope="module")
def pair() -> Iterator[VethPair]:
    with VethPair(subnet="198.18.46") as p:
        yield p


def _netns_inode() -> int:
    return os.stat("/proc/thread-self/ns/net").st_ino


def _python(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def test_in_thread_runs_in_the_namespace_and_returns(pair: VethPair) -> None:
    with pair.enter("b"):
        inside_b = _netns_inode()
    join = in_thread(pair, "b", _netns_inode)
    assert join() == inside_b != _netns_inode()
    # a VethEnd names the side as well
    assert in_thread(pair, pair.b, lambda: 7)() == 7


def test_in_thread_reraises_and_times_out(pair: VethPair) -> None:
    def boom() -> None:
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        in_thread(pair, "a", boom)()
    slow = in_thread(pair, "a", lambda: time.sleep(1.0), timeout=0.1)
    with pytest.raises(TimeoutError, match=r"did not finish in 0\.1 s"):
        slow()


def test_server_is_ready_once_it_listens_and_is_stopped_by_pid(pair: VethPair) -> None:
    # listens only after 0.5 s: the block starts after that, so the connect below succeeds
    code = (
        "import socket, time; s = socket.socket(); "
        f"s.bind(({pair.b.ip!r}, {PORT})); time.sleep(0.5); s.listen(); time.sleep(60)"
    )
    start = time.monotonic()
    with server(_python(code), netns=pair.b, port=PORT) as proc:
        assert time.monotonic() - start >= 0.5
        with pair.enter("a"):
            socket.create_connection((pair.b.ip, PORT), timeout=5).close()
        assert proc.poll() is None
    assert proc.returncode == -signal.SIGTERM


def test_server_udp_and_without_a_port(pair: VethPair) -> None:
    code = (
        "import socket, time; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.bind(({pair.b.ip!r}, {PORT + 1})); time.sleep(60)"
    )
    # no netns: where the calling thread is (the child and ss fork from it)
    with (
        pair.enter("b"),
        server(_python(code), port=PORT + 1, proto="udp", stop=signal.SIGINT) as p,
    ):
        assert p.poll() is None
    assert p.returncode != 0  # KeyboardInterrupt in the sleep
    start = time.monotonic()
    with server(["sleep", "60"], netns=pair.b.netns) as p:
        assert time.monotonic() - start >= 0.3 and p.poll() is None
    assert p.returncode == -signal.SIGTERM


def test_server_that_exits_or_never_listens(pair: VethPair) -> None:
    fail = "import sys; print('no such file'); sys.exit(3)"
    with (
        pytest.raises(RuntimeError, match=r"exited 3: .*no such file"),
        server(_python(fail), netns=pair.b, port=PORT),
    ):
        pass
    start = time.monotonic()
    with (
        pytest.raises(TimeoutError, match=f"did not listen on tcp port {PORT}"),
        server(["sleep", "60"], netns=pair.b, port=PORT, ready_timeout=0.5),
    ):
        pass
    assert time.monotonic() - start < 5  # stopped by SIGTERM, not waited for
    with pytest.raises(ValueError, match="proto"), server(["true"], proto="sctp"):
        pass
