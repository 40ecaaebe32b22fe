"""Project-wide pytest configuration.

Under CI (``CI=true``) as root, a skipped test means the environment is missing something the
project's CI must provide, so the run fails. Tests that are legitimately optional (for example a
C reference that needs a library Debian may not ship) skip with a reason starting ``optional:``.
"""

from __future__ import annotations

import os

import pytest

_skips: list[tuple[str, str]] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _skips.append((report.nodeid, reason))


def _ci_as_root() -> bool:
    return os.environ.get("CI", "").lower() == "true" and os.geteuid() == 0


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
