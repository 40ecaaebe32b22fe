"""Benchmark session helpers: a summary table of every benchmark's ``extra_info``.

Each benchmark stores plain values in ``benchmark.extra_info``: ``rate`` and ``unit`` (what it
measured), ``reference`` (what it was compared with in the same run), optionally
``reference_rate`` (the reference's rate, same unit), and ``ratio`` (rate / reference_rate).
This file collects them and prints one table at the end of the session, also with
``--benchmark-disable``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

_rows: list[tuple[str, dict[str, Any]]] = []


@pytest.fixture(autouse=True)
def _collect_extra_info(request: pytest.FixtureRequest) -> Iterator[None]:
    if "benchmark" not in request.fixturenames:
        yield
        return
    # Taken before the test so that it is still alive (not torn down) when we read it.
    bench = request.getfixturevalue("benchmark")
    yield
    info = dict(bench.extra_info)
    if "rate" in info:
        _rows.append((request.node.name, info))


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _rows:
        return
    cols = ["benchmark", "rate", "unit", "reference", "reference_rate", "ratio"]
    table = [[name, *(_fmt(info.get(c, "")) for c in cols[1:])] for name, info in _rows]
    widths = [max(len(r[i]) for r in [cols, *table]) for i in range(len(cols))]
    terminalreporter.write_sep("=", "kbypass benchmark summary (same-run ratios)")
    for r in [cols, *table]:
        terminalreporter.write_line("  ".join(x.ljust(w) for x, w in zip(r, widths)))
