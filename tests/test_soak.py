"""A short soak in CI: producers SIGKILLed at random while a Pipeline takes traffic.

The 10-minute run is ``python -m kbypass.testing.soak --seconds 600`` (docs/performance.md).
"""

from __future__ import annotations

import os

from kbypass.testing import soak


def test_soak_loses_nothing_when_producers_are_killed() -> None:
    root = os.geteuid() == 0
    report = soak.run(15, producers=3, pipeline=root)
    assert report.ok, report.summary()
    assert report.killed >= 10 and report.incarnations == report.killed, report.summary()
    assert report.ring_items > 100_000, report.summary()
    assert report.last_bulk_delivered + report.last_bulk_lost == report.killed
    if root:
        assert report.offered > 10_000 and report.accounting["balanced"], report.summary()
        assert report.verdicts["kept"] == report.verdicts["released"] > 0, report.summary()
