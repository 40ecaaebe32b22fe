"""Test helpers: run code as an unprivileged user, and borrow hugetlb pages for a while."""

from __future__ import annotations

import os
import pickle
import resource
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

NOBODY = 65534


def as_nobody(fn: Callable[[], T], memlock: int = 8 << 20) -> T:
    """Run ``fn`` in a forked child that dropped root (uid/gid nobody, RLIMIT_MEMLOCK capped).

    Returns what ``fn`` returned; re-raises what it raised. Needs root to drop from.
    """
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        try:
            os.close(r)
            resource.setrlimit(resource.RLIMIT_MEMLOCK, (memlock, memlock))
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
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
