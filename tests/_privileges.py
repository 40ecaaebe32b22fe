"""Test helpers: run code as an unprivileged user or without some capabilities, and borrow
hugetlb pages for a while."""

from __future__ import annotations

import ctypes
import os
import pickle
import resource
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

NOBODY = 65534


def in_child(
    fn: Callable[[], T],
    *,
    memlock: tuple[int, int] | None = None,
    drop_caps: Sequence[int] = (),
    uid: int | None = None,
) -> T:
    """Run ``fn`` in a forked child and return what it returned (re-raise what it raised).

    Before ``fn`` the child sets RLIMIT_MEMLOCK to ``memlock`` (soft, hard), drops the
    capabilities ``drop_caps`` (numbers from linux/capability.h) from its effective, permitted
    and inheritable sets, and switches to user and group ``uid``, in that order. Needs root for
    anything but the first.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            if memlock is not None:
                resource.setrlimit(resource.RLIMIT_MEMLOCK, memlock)
            if drop_caps:
                _drop_capabilities(drop_caps)
            if uid is not None:
                os.setgroups([])
                os.setgid(uid)
                os.setuid(uid)
            try:
                out: tuple[bool, Any] = (True, fn())
            except BaseException as e:
                out = (False, e)
            with os.fdopen(w, "wb") as f:
                pickle.dump(out, f)
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    ok, value = pickle.loads(data)
    if not ok:
        raise value
    return value  # type: ignore[no-any-return]


def as_nobody(fn: Callable[[], T], memlock: int = 8 << 20, memlock_hard: int | None = None) -> T:
    """Run ``fn`` in a forked child that dropped root (uid/gid nobody, RLIMIT_MEMLOCK capped).

    The soft limit is ``memlock``, the hard one ``memlock_hard`` (the same by default).
    Returns what ``fn`` returned; re-raises what it raised. Needs root to drop from.
    """
    hard = memlock if memlock_hard is None else memlock_hard
    return in_child(fn, memlock=(memlock, hard), uid=NOBODY)


CAP_IPC_LOCK = 14
CAP_SYS_RESOURCE = 24


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def _drop_capabilities(caps: Sequence[int]) -> None:
    """Remove ``caps`` from this thread's capability sets (capget/capset, version 3)."""
    libc = ctypes.CDLL(None, use_errno=True)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3, this thread
    data = (_CapData * 2)()
    if libc.capget(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capget")
    for cap in caps:
        word, bit = divmod(cap, 32)
        keep = ~(1 << bit) & 0xFFFFFFFF
        data[word].effective &= keep
        data[word].permitted &= keep
        data[word].inheritable &= keep
    if libc.capset(ctypes.byref(header), data) != 0:
        raise OSError(ctypes.get_errno(), "capset")


def has_capability(cap: int) -> bool:
    """Whether ``cap`` is in this process's effective set (CapEff of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> cap & 1)
    return False


def locked_bytes() -> int:
    """Bytes this process has mlocked (VmLck of /proc/self/status)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmLck:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("/proc/self/status has no VmLck line")


def _pool(page_kb: int) -> Path:
    return Path(f"/sys/kernel/mm/hugepages/hugepages-{page_kb}kB")


def available(page_kb: int) -> int:
    """Free, unreserved hugetlb pages of this size."""
    d = _pool(page_kb)
    return int((d / "free_hugepages").read_text()) - int((d / "resv_hugepages").read_text())


@contextmanager
def hugepages(page_kb: int, n: int) -> Iterator[bool]:
    """Make ``n`` pages of ``page_kb`` available; yields whether the kernel found them.

    Afterwards it takes back exactly the pages it added (other processes on the machine may
    change the pool meanwhile, so it does not restore an absolute number).
    """
    path = _pool(page_kb) / "nr_hugepages"
    before = int(path.read_text())
    short = max(0, n - available(page_kb))
    added = 0
    try:
        if short:
            path.write_text(str(before + short))
            added = max(0, int(path.read_text()) - before)
        yield available(page_kb) >= n
    finally:
        if added:
            now = int(path.read_text())
            path.write_text(str(max(0, now - added)))
