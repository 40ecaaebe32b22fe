"""kbypass.Ring: API, bulk/burst semantics, bad input, GIL release, two processes."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

from kbypass import Ring

U64 = np.uint64


def arr(*xs: int) -> np.ndarray:
    return np.array(xs, dtype=U64)


@pytest.fixture
def shm_name():
    name = f"pytest-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    yield name
    Ring.unlink(name)


# ---------------------------------------------------------------- API


@pytest.mark.parametrize("mode", ["spsc", "mpsc", "spmc", "mpmc"])
def test_single_items_and_properties(mode: str) -> None:
    r = Ring(4, mode=mode)
    assert (r.capacity, r.mode, r.name, len(r), r.free, r.closed) == (4, mode, None, 0, 4, False)
    assert r.dequeue() is None, "dequeue on empty returns None"
    for x in (0, 1, 2**64 - 1, 7):
        assert r.enqueue(x) is True
    assert r.enqueue(9) is False, "full: enqueue returns False"
    assert (len(r), r.free) == (4, 0)
    assert [r.dequeue() for _ in range(5)] == [0, 1, 2**64 - 1, 7, None]
    assert "capacity=4" in repr(r)


def test_bulk_is_all_or_nothing() -> None:
    r = Ring(8)
    assert r.enqueue_bulk(np.arange(6, dtype=U64)) == 6
    assert r.enqueue_bulk(arr(6, 7, 8)) == 0, "3 items, 2 free: nothing enqueued"
    assert len(r) == 6
    out = r.dequeue_bulk(7)
    assert out.dtype == U64 and out.shape == (0,), "7 asked, 6 there: nothing taken"
    np.testing.assert_array_equal(r.dequeue_bulk(4), np.arange(4, dtype=U64))
    assert len(r) == 2


def test_burst_takes_what_fits() -> None:
    r = Ring(8)
    assert r.enqueue_burst(np.arange(100, 111, dtype=U64)) == 8, "a prefix of 8 fits"
    assert r.enqueue_burst(arr(1)) == 0
    got = r.dequeue_burst(5)
    np.testing.assert_array_equal(got, np.arange(100, 105, dtype=U64))
    np.testing.assert_array_equal(r.dequeue_burst(100), np.arange(105, 108, dtype=U64))
    assert r.dequeue_burst(3).shape == (0,)
    assert r.dequeue_burst(0).shape == (0,)
    assert r.enqueue_bulk(np.empty(0, dtype=U64)) == 0


def test_dequeue_into_preallocated_array() -> None:
    r = Ring(16)
    r.enqueue_bulk(np.arange(5, dtype=U64))
    out = np.zeros(8, dtype=U64)
    assert r.dequeue_into(out[:2]) == 2
    assert r.dequeue_into(out, bulk=True) == 0, "8 asked, 3 there: bulk takes none"
    assert r.dequeue_into(out) == 3
    np.testing.assert_array_equal(out[:3], np.arange(2, 5, dtype=U64))
    with pytest.raises(TypeError, match="uint64"):
        r.dequeue_into(np.zeros(4, dtype=np.int64))
    with pytest.raises(ValueError, match="contiguous"):
        r.dequeue_into(np.zeros(8, dtype=U64)[::2])
    ro = np.zeros(4, dtype=U64)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        r.dequeue_into(ro)
    with pytest.raises(ValueError, match="capacity 16"):
        r.dequeue_into(np.zeros(17, dtype=U64), bulk=True)


def test_non_contiguous_arrays_are_accepted() -> None:
    r = Ring(16)
    a = np.arange(10, dtype=U64)
    assert r.enqueue_bulk(a[::2]) == 5
    assert r.enqueue_burst(a[::-3]) == 4
    np.testing.assert_array_equal(r.dequeue_bulk(9), np.array([0, 2, 4, 6, 8, 9, 6, 3, 0], U64))


def test_stats_count_full_and_empty() -> None:
    r = Ring(2)
    r.enqueue_bulk(arr(1, 2, 3))
    r.dequeue()
    s = r.stats()
    assert s["full"] == 1 and s["empty"] == 1 and s["len"] == 0 and s["attached"] == 1


def test_blocking_calls_and_timeouts() -> None:
    r = Ring(4, mode="mpmc")
    r.put(5, timeout=0)
    r.put_bulk(arr(6, 7, 8), timeout=1.0)
    with pytest.raises(TimeoutError, match="longer timeout"):
        r.put(9, timeout=0.05)
    with pytest.raises(TimeoutError):
        r.put_bulk(arr(1), timeout=0)
    assert r.get(timeout=1) == 5
    np.testing.assert_array_equal(r.get_burst(8, timeout=1), arr(6, 7, 8))
    t0 = time.monotonic()
    with pytest.raises(TimeoutError, match="too few items"):
        r.get_bulk(2, timeout=0.1)
    assert 0.09 <= time.monotonic() - t0 < 2.0
    with pytest.raises(TimeoutError):
        r.get_burst(2, timeout=0.01)
    with pytest.raises(ValueError, match="timeout"):
        r.get(timeout=-1)
    assert r.get_burst(0).shape == (0,)


def test_context_manager_and_close() -> None:
    with Ring(8) as r:
        r.enqueue(1)
    assert r.closed
    r.close()  # a second close is a no-op
    with pytest.raises(RuntimeError, match="closed"):
        r.enqueue(1)
    with pytest.raises(RuntimeError, match="closed"):
        len(r)
    with pytest.raises(RuntimeError, match="closed"):
        r.get(timeout=0)
    assert "closed" in repr(r)


def test_single_producer_allows_one_object(shm_name: str) -> None:
    a = Ring.create_shared(shm_name, 8, mode="spsc")
    b = Ring.attach(shm_name)
    a.enqueue(1)
    with pytest.raises(RuntimeError, match="mpmc"):
        b.enqueue(2)
    assert b.dequeue() == 1
    a.close()
    b.enqueue(3)  # the producer side is free again
    assert b.dequeue() == 3
    b.close()


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("capacity", "exc", "match"),
    [
        (1000, ValueError, "power of two: use 512 or 1024"),
        (0, ValueError, "greater than zero"),
        (-8, ValueError, "negative"),
        (2**40, ValueError, "too large"),
        (2**70, ValueError, "out of range"),
        (8.0, TypeError, "int"),
        ("8", TypeError, "int"),
    ],
)
def test_bad_capacity(capacity: object, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        Ring(capacity)  # type: ignore[arg-type]


def test_bad_mode() -> None:
    with pytest.raises(ValueError, match='"spsc", "mpsc", "spmc" or "mpmc"'):
        Ring(8, mode="fifo")


def test_bad_arrays() -> None:
    r = Ring(8)
    with pytest.raises(TypeError, match=r"dtype int64.*numpy.asarray\(x, dtype=numpy.uint64\)"):
        r.enqueue_bulk(np.arange(3))
    with pytest.raises(TypeError, match="dtype float64"):
        r.enqueue_burst(np.zeros(3))
    with pytest.raises(TypeError, match="got list"):
        r.enqueue_bulk([1, 2, 3])  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="2-D"):
        r.enqueue_bulk(np.zeros((2, 2), dtype=U64))
    with pytest.raises(ValueError, match="capacity 8"):
        r.dequeue_bulk(9)
    with pytest.raises(ValueError, match="capacity 8"):
        r.put_bulk(np.zeros(9, dtype=U64))
    with pytest.raises(ValueError, match="negative"):
        r.dequeue_burst(-1)
    assert len(r) == 0, "nothing was enqueued by the failed calls"


def test_bad_items() -> None:
    r = Ring(8)
    with pytest.raises(ValueError, match="2\\*\\*64"):
        r.enqueue(-1)
    with pytest.raises(ValueError, match="2\\*\\*64"):
        r.enqueue(2**64)
    with pytest.raises(TypeError, match="int"):
        r.enqueue("1")  # type: ignore[arg-type]


def test_attach_missing_name() -> None:
    with pytest.raises(FileNotFoundError, match="create it first") as ei:
        Ring.attach(f"no-such-ring-{os.getpid()}")
    assert ei.value.errno == 2


@pytest.mark.parametrize("name", ["", "../etc", "a/b", ".hidden", "x" * 201])
def test_bad_names(name: str) -> None:
    with pytest.raises(ValueError, match="invalid shared-memory name"):
        Ring.create_shared(name, 8)
    with pytest.raises(ValueError):
        Ring.attach(name)


# ---------------------------------------------------------------- shared lifetime


def test_shared_lifetime(shm_name: str) -> None:
    path = f"/dev/shm/kbypass.ring.{shm_name}"
    a = Ring.create_shared(shm_name, 16, mode="mpmc")
    assert a.name == shm_name and os.path.exists(path)
    with pytest.raises(FileExistsError, match="attach"):
        Ring.create_shared(shm_name, 16)
    b = Ring.attach(shm_name)
    assert (b.capacity, b.mode, b.stats()["attached"]) == (16, "mpmc", 2)
    a.enqueue(42)
    assert b.dequeue() == 42
    a.close()
    assert os.path.exists(path), "still attached by b"
    b.close()
    assert not os.path.exists(path), "the last user removed the name"
    with pytest.raises(FileNotFoundError):
        Ring.attach(shm_name)


def test_stale_ring_replace_and_unlink(shm_name: str) -> None:
    # A child that creates a ring and dies without closing it leaves the name behind.
    code = (
        f"import os; from kbypass import Ring; r = Ring.create_shared({shm_name!r}, 8); os._exit(0)"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert os.path.exists(f"/dev/shm/kbypass.ring.{shm_name}")
    with pytest.raises(FileExistsError, match="crashed: remove it with unlink"):
        Ring.create_shared(shm_name, 8)
    r = Ring.create_shared(shm_name, 32, replace=True)
    assert Ring.attach(shm_name).capacity == 32
    assert Ring.unlink(shm_name) is True
    assert Ring.unlink(shm_name) is False
    r.enqueue(1)  # still usable after its name is gone
    assert r.dequeue() == 1
    r.close()


# ---------------------------------------------------------------- GIL


def test_blocking_get_releases_the_gil() -> None:
    r = Ring(8)
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(r.get(timeout=10)))
    t0 = time.monotonic()
    waiter.start()
    # While the waiter blocks in get(), this thread keeps running Python code.
    spins = 0
    while time.monotonic() - t0 < 0.3:
        spins += 1
    assert spins > 10_000, f"main thread starved: {spins} loop iterations in 0.3 s"
    assert waiter.is_alive() and not got
    r.enqueue(77)
    waiter.join(timeout=10)
    assert got == [77]


def test_two_threads_bulk_through_one_ring() -> None:
    r = Ring(1024)
    n, chunk = 200_000, 500

    def produce() -> None:
        for i in range(0, n, chunk):
            r.put_bulk(np.arange(i, i + chunk, dtype=U64), timeout=20)

    t = threading.Thread(target=produce)
    t.start()
    parts = []
    got = 0
    while got < n:
        a = r.get_burst(4096, timeout=20)
        parts.append(a)
        got += len(a)
    t.join()
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(n, dtype=U64))


# ---------------------------------------------------------------- two processes

PRODUCER = """
import sys, numpy as np
from kbypass import Ring
name, n, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
with Ring.attach(name) as r:
    for i in range(0, n, chunk):
        r.put_bulk(np.arange(i, min(i + chunk, n), dtype=np.uint64), timeout=30)
"""


def test_two_processes_move_a_million_items_in_order(shm_name: str) -> None:
    n, chunk = 1_000_000, 4096
    ring = Ring.create_shared(shm_name, 65536, mode="spsc")
    child = subprocess.Popen([sys.executable, "-c", PRODUCER, shm_name, str(n), str(chunk)])
    try:
        out = np.empty(n, dtype=U64)
        got = 0
        deadline = time.monotonic() + 120
        while got < n:
            assert time.monotonic() < deadline, f"only {got} of {n} items after 120 s"
            a = ring.get_burst(65536, timeout=30)
            out[got : got + len(a)] = a
            got += len(a)
        assert child.wait(timeout=60) == 0
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    np.testing.assert_array_equal(out, np.arange(n, dtype=U64))
    assert len(ring) == 0 and ring.stats()["attached"] == 1, "the child detached on exit"
    ring.close()
    assert not os.path.exists(f"/dev/shm/kbypass.ring.{shm_name}")


# ---------------------------------------------------------------- crashed, stopped, forked peers

# Moves big bulks through a shared MPMC ring forever, so that most of its time is spent between
# a claim and its publish (a 256 KiB copy each way): where a SIGKILL or SIGSTOP does harm.
CHURN = """
import sys, numpy as np
from kbypass import Ring
r = Ring.attach(sys.argv[1])
a = np.arange(1 << 15, dtype=np.uint64)
print("ready", flush=True)
while True:
    r.put_bulk(a, timeout=None)
    r.get_bulk(len(a), timeout=None)
"""

# Checks from a separate process that the ring still works: an unrecoverable ring makes it
# hang (with the GIL held, in the old code), which the parent sees as a timeout.
CHECK = """
import sys
from kbypass import Ring
r = Ring.attach(sys.argv[1])
r.put(1 << 40, timeout=5.0)  # not a value the churners move
while r.get(timeout=5.0) != 1 << 40:
    pass
print("ok", flush=True)
"""


def _churner(name: str) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", CHURN, name], stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return p


def _stop_mid_claim(ring: Ring, p: subprocess.Popen[str], side: str, tries: int = 400) -> bool:
    """SIGSTOP `p` at random moments until it is stopped inside a claim on `side`."""
    import random
    import signal

    for _ in range(tries):
        time.sleep(random.uniform(0, 0.003))
        os.kill(p.pid, signal.SIGSTOP)
        # Wait until it really is stopped before looking at the ring.
        for _ in range(1000):
            with open(f"/proc/{p.pid}/stat") as f:
                if f.read().split(") ", 1)[1].startswith("T"):
                    break
            time.sleep(0.0005)
        if ring.stats().get(f"{side}_claim") == p.pid:
            return True
        os.kill(p.pid, signal.SIGCONT)
    return False


@pytest.mark.parametrize("side", ["producer", "consumer"])
def test_a_peer_killed_mid_call_blocks_nobody_and_is_counted(shm_name: str, side: str) -> None:
    ring = Ring.create_shared(shm_name, 1 << 16, mode="mpmc")
    kills = 0
    for _ in range(3):
        p = _churner(shm_name)
        try:
            assert _stop_mid_claim(ring, p, side), f"never caught the child inside a {side} claim"
            p.kill()  # SIGKILL between its claim and its publish
            p.wait()
            kills += 1
            check = subprocess.run(
                [sys.executable, "-c", CHECK, shm_name],
                capture_output=True, text=True, timeout=30,
            )  # fmt: skip
            assert check.stdout.strip() == "ok", check.stderr
        finally:
            if p.poll() is None:
                p.kill()
                p.wait()
    s = ring.stats()
    assert s[f"{side}_recovered"] == kills, s
    assert s[f"{side}_claim"] is None and s["attached"] == 1, s
    # Every dead producer's claim was one whole bulk (never published); every dead consumer's
    # items went back to the ring, so the ring holds exactly what live calls left in it.
    if side == "producer":
        assert s["producer_rolled_back"] == kills * (1 << 15), s
    else:
        assert s["consumer_rolled_back"] == kills * (1 << 15), s


# Runs, with the GIL, the calls a stopped peer must not hang: a non-blocking enqueue, a put with
# a timeout, and a put without one interrupted by Ctrl-C. Prints what happened and how long.
STALLED = """
import os, signal, sys, threading, time
from kbypass import Ring
r = Ring.attach(sys.argv[1])
t = time.monotonic(); ok = r.enqueue(1); print("enqueue", ok, round(time.monotonic() - t, 3))
t = time.monotonic()
try:
    r.put(1, timeout=0.5)
    print("put returned")
except TimeoutError:
    print("put timeout", round(time.monotonic() - t, 3))
threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
t = time.monotonic()
try:
    r.put(1)
    print("put returned")
except KeyboardInterrupt:
    print("put interrupted", round(time.monotonic() - t, 3))
print("busy", r.stats()["producer_busy"] > 0, flush=True)
"""


def test_a_stopped_peer_never_hangs_a_call_and_ctrl_c_works(shm_name: str) -> None:
    from _signals import sigint_default

    ring = Ring.create_shared(shm_name, 1 << 16, mode="mpmc")
    p = _churner(shm_name)
    try:
        assert _stop_mid_claim(ring, p, "producer"), "never caught the child inside an enqueue"
        r = subprocess.run(
            [sys.executable, "-c", STALLED, shm_name],
            capture_output=True, text=True, timeout=30, preexec_fn=sigint_default,
        )  # fmt: skip
        lines = r.stdout.split("\n")
        enqueue, timeout, interrupted, busy = lines[0], lines[1], lines[2], lines[3]
        assert enqueue.startswith("enqueue False") and float(enqueue.split()[2]) < 0.5, r.stdout
        assert timeout.startswith("put timeout") and 0.45 < float(timeout.split()[2]) < 3, r.stdout
        assert interrupted.startswith("put interrupted"), r.stdout + r.stderr
        assert 0.25 < float(interrupted.split()[2]) < 1.5, r.stdout
        assert busy == "busy True", r.stdout
        assert ring.stats()["producer_recovered"] == 0, "a stopped process is alive"
    finally:
        p.kill()
        p.wait()


def test_a_shared_ring_inherited_across_fork_refuses_and_loses_nothing(shm_name: str) -> None:
    r = Ring.create_shared(shm_name, 8, mode="spsc")
    assert r.enqueue(100)
    pid = os.fork()
    if pid == 0:  # the child: refused, then closes its copy
        code = 1
        try:
            r.enqueue(999)
        except RuntimeError as e:
            code = 0 if "fork" in str(e) and "attach" in str(e) else 2
        r.close()
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert r.enqueue(200) and r.enqueue(300)
    other = Ring.attach(shm_name)  # the child's close did not remove the name
    assert [other.dequeue() for _ in range(4)] == [100, 200, 300, None]
    assert r.stats()["attached"] == 2
    other.close()
    r.close()


def test_attach_refuses_a_file_others_could_have_written(shm_name: str) -> None:
    path = f"/dev/shm/kbypass.ring.{shm_name}"
    Ring.create_shared(shm_name, 8).close()  # removed again by its last user
    with open(path, "wb") as f:
        f.write(b"\0" * 16384)
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="chmod 600"):
        Ring.attach(shm_name)
