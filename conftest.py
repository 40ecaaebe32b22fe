"""Project-wide pytest configuration (tests/ and benches/).

* Under CI (``CI=true``) as root, a skipped test means the machine lacks something CI must
  provide, so the run fails. Tests that are legitimately optional skip with a reason containing
  ``optional:``.
* Benchmarks store their measured rate and the same-run ratio to their reference in
  ``benchmark.extra_info`` (keys ``rate``, ``unit``, ``reference``, ``ratio``); a table of them is
  printed at the end of the session, whether or not ``--benchmark-disable`` is set.
"""

from __future__ import annotations

import os
from typing import Any

import pytest

_skips: list[tuple[str, str]] = []
_bench_rows: list[tuple[str, dict[str, Any]]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skips.append((report.nodeid, reason))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.passed:
        bench = getattr(item, "funcargs", {}).get("benchmark")
        info = getattr(bench, "extra_info", None)
        if info and "rate" in info:
            _bench_rows.append((item.nodeid.split("::", 1)[-1], dict(info)))


def _ci_as_root() -> bool:
    return os.environ.get("CI", "").lower() == "true" and os.geteuid() == 0


def _fmt_rate(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return str(v)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(v) >= div:
            return f"{v / div:.2f}{suffix}"
    return f"{v:.2f}"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _bench_rows:
        return
    tr = terminalreporter
    tr.section("kbypass benchmark summary (same-run ratios)")
    width = max(len(n) for n, _ in _bench_rows)
    tr.write_line(f"{'benchmark':<{width}}  {'rate':>10}  {'unit':<10}  {'ratio':>8}  reference")
    for name, info in _bench_rows:
        ratio = info.get("ratio")
        ratio_s = f"{ratio:.2f}x" if isinstance(ratio, (int, float)) else "-"
        tr.write_line(
            f"{name:<{width}}  {_fmt_rate(info.get('rate')):>10}  {info.get('unit', ''):<10}  "
            f"{ratio_s:>8}  {info.get('reference', '')}"
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if not _ci_as_root():
        return
    bad = [(n, r) for n, r in _skips if "optional:" not in r]
    if bad:
        tr = session.config.pluginmanager.get_plugin("terminalreporter")
        if tr is not None:
            tr.write_line("")
            tr.write_line(f"CI as root: {len(bad)} test(s) skipped that must run:", red=True)
            for nodeid, reason in bad:
                tr.write_line(f"  {nodeid}: {reason}", red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
